//! Opaque pagination cursors: URL-safe base64 of a small JSON object. They carry positions, not
//! permissions: every query is still scoped to its user, so a forged cursor can only skip rows.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Position after the last hit of a search page: its distance and memory id. The distance
/// travels as its bit pattern, so that it comes back exactly (a decimal round trip could move
/// it by one unit in the last place and repeat or skip a hit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "SearchCursorWire", into = "SearchCursorWire")]
pub(crate) struct SearchCursor {
    pub d: f64,
    pub i: i64,
}

#[derive(Serialize, Deserialize)]
struct SearchCursorWire {
    b: u64,
    i: i64,
}

impl From<SearchCursorWire> for SearchCursor {
    fn from(w: SearchCursorWire) -> Self {
        Self {
            d: f64::from_bits(w.b),
            i: w.i,
        }
    }
}

impl From<SearchCursor> for SearchCursorWire {
    fn from(c: SearchCursor) -> Self {
        Self {
            b: c.d.to_bits(),
            i: c.i,
        }
    }
}

impl SearchCursor {
    /// Whether a hit at (`distance`, `id`) comes after this position.
    pub fn admits(&self, distance: f64, id: i64) -> bool {
        distance > self.d || (distance == self.d && id > self.i)
    }
}

/// Position after the last item of a listing: its time (microseconds) and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListCursor {
    pub t: i64,
    pub i: i64,
}

pub(crate) fn encode<T: Serialize>(cursor: &T) -> String {
    let json = serde_json::to_vec(cursor).expect("cursor serialises");
    URL_SAFE_NO_PAD.encode(json)
}

pub(crate) fn decode<T: DeserializeOwned>(cursor: &str) -> Result<T> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| Error::invalid("malformed cursor"))?;
    serde_json::from_slice(&bytes).map_err(|_| Error::invalid("malformed cursor"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let c = SearchCursor {
            d: 0.123_456_789_012_345_67,
            i: 42,
        };
        let back: SearchCursor = decode(&encode(&c)).unwrap();
        assert_eq!(back, c);
        assert!(decode::<SearchCursor>("not base64!").is_err());
        assert!(decode::<SearchCursor>(&URL_SAFE_NO_PAD.encode(b"{}")).is_err());
        assert!(c.admits(0.2, 1));
        assert!(c.admits(c.d, 43));
        assert!(!c.admits(c.d, 42));
        assert!(!c.admits(0.1, 99));
    }

    proptest::proptest! {
        /// Any position comes back bit for bit, and any string decodes or is a clear
        /// `InvalidInput`, never a panic.
        #[test]
        fn cursors_round_trip_and_garbage_is_refused(
            bits: u64, i: i64, t: i64, garbage in ".{0,64}",
        ) {
            let c = SearchCursor { d: f64::from_bits(bits), i };
            let back: SearchCursor = decode(&encode(&c)).unwrap();
            proptest::prop_assert_eq!((back.d.to_bits(), back.i), (bits, i));
            let l = ListCursor { t, i };
            proptest::prop_assert_eq!(decode::<ListCursor>(&encode(&l)).unwrap(), l);
            if let Err(e) = decode::<ListCursor>(&garbage) {
                proptest::prop_assert_eq!(e.kind(), crate::error::ErrorKind::InvalidInput);
            }
        }
    }
}
