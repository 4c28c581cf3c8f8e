//! Time expressions in queries: "on 25 May, 2022", "in August 2023", "in June", "last week",
//! "3 days ago", "summer 2021" become windows of time that retrieval can boost or search in.
//!
//! The parser is deliberately small and lexical (no model): it reads absolute dates in the
//! common English shapes (day month year, month day year, ISO), months and seasons with or
//! without a year, years after a preposition, and relative expressions resolved against the
//! caller's "now". A date written without a year ("in June") could be any June, so it yields
//! one window per year for the last [`YEARS_BACK`] years. Windows of a day are widened by a
//! day on each side: the query's time zone is not known.
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// How many past years a month or season without a year stands for.
pub const YEARS_BACK: i32 = 3;

/// The most windows one query yields.
pub const MAX_WINDOWS: usize = 6;

/// A half-open span of time, `[since, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWindow {
    /// The start (inclusive).
    pub since: DateTime<Utc>,
    /// The end (exclusive).
    pub until: DateTime<Utc>,
}

impl TimeWindow {
    /// Whether `t` falls in the window.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.since <= t && t < self.until
    }

    fn days(from: NaiveDate, to: NaiveDate) -> Self {
        let at = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"));
        Self {
            since: at(from),
            until: at(to),
        }
    }

    /// A calendar day, widened by a day on each side.
    fn day(d: NaiveDate) -> Self {
        Self::days(d - Duration::days(1), d + Duration::days(2))
    }

    fn month(year: i32, month: u32) -> Option<Self> {
        let from = NaiveDate::from_ymd_opt(year, month, 1)?;
        let to = if month == 12 {
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?
        } else {
            NaiveDate::from_ymd_opt(year, month + 1, 1)?
        };
        Some(Self::days(from, to))
    }

    fn months(year: i32, first: u32, count: u32) -> Option<Self> {
        let a = Self::month(year, first)?;
        let last = first + count - 1;
        let b = if last > 12 {
            Self::month(year + 1, last - 12)?
        } else {
            Self::month(year, last)?
        };
        Some(Self {
            since: a.since,
            until: b.until,
        })
    }

    fn year(year: i32) -> Option<Self> {
        Some(Self::days(
            NaiveDate::from_ymd_opt(year, 1, 1)?,
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?,
        ))
    }
}

/// The months, lowercase.
pub const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// The days of the week, lowercase.
pub const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Whether a lowercase word names a month or a day of the week.
pub fn is_calendar_word(word: &str) -> bool {
    MONTHS.contains(&word) || WEEKDAYS.contains(&word)
}

fn month_of(word: &str) -> Option<u32> {
    let w = word.trim_end_matches('.');
    let w = if w == "sept" { "sep" } else { w };
    MONTHS
        .iter()
        .position(|m| *m == w || (w.len() == 3 && m.starts_with(w)))
        .map(|i| i as u32 + 1)
}

/// Season → (first month, months), northern hemisphere; winter starts in December.
fn season_of(word: &str) -> Option<(u32, u32)> {
    match word {
        "spring" => Some((3, 3)),
        "summer" => Some((6, 3)),
        "autumn" | "fall" => Some((9, 3)),
        "winter" => Some((12, 3)),
        _ => None,
    }
}

fn day_of(word: &str) -> Option<u32> {
    let digits = word
        .trim_end_matches("st")
        .trim_end_matches("nd")
        .trim_end_matches("rd")
        .trim_end_matches("th");
    let d: u32 = digits.parse().ok()?;
    (1..=31).contains(&d).then_some(d)
}

fn year_of(word: &str) -> Option<i32> {
    let y: i32 = word.trim_start_matches('\'').parse().ok()?;
    (word.len() == 4 && (1900..=2199).contains(&y)).then_some(y)
}

fn number_of(word: &str) -> Option<i64> {
    const WORDS: [&str; 12] = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve",
    ];
    match word {
        "a" | "an" => Some(1),
        "a couple of" | "couple" => Some(2),
        _ => word
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .or_else(|| WORDS.iter().position(|w| *w == word).map(|i| i as i64 + 1)),
    }
}

/// Words before a bare month or year that make it a time expression ("in may" but not
/// "may i").
const TIME_PREPOSITIONS: [&str; 12] = [
    "in", "on", "of", "during", "since", "until", "before", "after", "by", "early", "late", "mid",
];

fn iso_date(word: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(word, "%Y-%m-%d").ok()
}

/// The windows of time a query names, earliest-mentioned first (at most [`MAX_WINDOWS`]);
/// empty when it names none.
pub fn windows(query: &str, now: DateTime<Utc>) -> Vec<TimeWindow> {
    let words: Vec<String> = query
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '?' | '!' | '(' | ')' | '"'))
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_end_matches(['.', ';', ':']).to_lowercase())
        .collect();
    let today = now.date_naive();
    let mut out: Vec<TimeWindow> = Vec::new();
    let mut push = |w: TimeWindow, out: &mut Vec<TimeWindow>| {
        if !out.contains(&w) && out.len() < MAX_WINDOWS {
            out.push(w);
        }
    };
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let prev = |i: usize| if i == 0 { "" } else { word(i - 1) };
    let mut i = 0;
    while i < words.len() {
        let w = word(i);
        // ISO dates.
        if let Some(d) = iso_date(w) {
            push(TimeWindow::day(d), &mut out);
            i += 1;
            continue;
        }
        // Day Month [Year] ("25 may 2022", "25th of may").
        if let Some(d) = day_of(w) {
            let (m_at, of) = if word(i + 1) == "of" {
                (i + 2, 1)
            } else {
                (i + 1, 0)
            };
            if let Some(m) = month_of(word(m_at)) {
                let year = year_of(word(m_at + 1));
                dated(d, m, year, today, &mut out, &mut push);
                i += 2 + of + usize::from(year.is_some());
                continue;
            }
        }
        if let Some(m) = month_of(w) {
            // Month Day [Year] ("may 25, 2022").
            if let Some(d) = day_of(word(i + 1)) {
                let year = year_of(word(i + 2));
                dated(d, m, year, today, &mut out, &mut push);
                i += 2 + usize::from(year.is_some());
                continue;
            }
            // Month Year ("august 2023").
            if let Some(y) = year_of(word(i + 1)) {
                if let Some(win) = TimeWindow::month(y, m) {
                    push(win, &mut out);
                }
                i += 2;
                continue;
            }
            // A bare month after a preposition ("in june", "early may").
            if TIME_PREPOSITIONS.contains(&prev(i)) || matches!(prev(i), "this" | "last") {
                for y in recent_years(today, m, 1) {
                    if let Some(win) = TimeWindow::month(y, m) {
                        push(win, &mut out);
                    }
                }
            }
            i += 1;
            continue;
        }
        if let Some((first, count)) = season_of(w) {
            if let Some(y) = year_of(word(i + 1)) {
                if let Some(win) = TimeWindow::months(y, first, count) {
                    push(win, &mut out);
                }
                i += 2;
                continue;
            }
            if TIME_PREPOSITIONS.contains(&prev(i)) || matches!(prev(i), "this" | "last") {
                for y in recent_years(today, first, count) {
                    if let Some(win) = TimeWindow::months(y, first, count) {
                        push(win, &mut out);
                    }
                }
            }
            i += 1;
            continue;
        }
        if let Some(y) = year_of(w)
            && TIME_PREPOSITIONS.contains(&prev(i))
        {
            if let Some(win) = TimeWindow::year(y) {
                push(win, &mut out);
            }
            i += 1;
            continue;
        }
        // Relative expressions.
        match (w, word(i + 1)) {
            ("yesterday", _) => push(TimeWindow::day(today - Duration::days(1)), &mut out),
            ("today" | "tonight", _) => push(TimeWindow::day(today), &mut out),
            ("last" | "this" | "past", unit @ ("week" | "weekend" | "month" | "year")) => {
                if let Some(win) = relative_period(w, unit, today) {
                    push(win, &mut out);
                }
                i += 2;
                continue;
            }
            _ => {}
        }
        // "N days/weeks/months/years ago".
        if let Some(n) = number_of(w)
            && word(i + 2) == "ago"
        {
            let unit = word(i + 1).trim_end_matches('s');
            let back = match unit {
                "day" => Some((Duration::days(n), Duration::days(1))),
                "week" => Some((Duration::weeks(n), Duration::days(4))),
                "month" => Some((Duration::days(30 * n), Duration::days(16))),
                "year" => Some((Duration::days(365 * n), Duration::days(183))),
                _ => None,
            };
            if let Some((back, slack)) = back {
                let centre = today - back;
                push(
                    TimeWindow::days(centre - slack, centre + slack + Duration::days(1)),
                    &mut out,
                );
                i += 3;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// A day and month with or without a year (without: each of the recent years in which that
/// day has already come).
fn dated(
    d: u32,
    m: u32,
    year: Option<i32>,
    today: NaiveDate,
    out: &mut Vec<TimeWindow>,
    push: &mut impl FnMut(TimeWindow, &mut Vec<TimeWindow>),
) {
    match year {
        Some(y) => {
            if let Some(date) = NaiveDate::from_ymd_opt(y, m, d) {
                push(TimeWindow::day(date), out);
            }
        }
        None => {
            for y in recent_years(today, m, 1) {
                if let Some(date) = NaiveDate::from_ymd_opt(y, m, d) {
                    push(TimeWindow::day(date), out);
                }
            }
        }
    }
}

/// The last [`YEARS_BACK`] years in which the months `first..first + count` have begun by
/// `today`, newest first.
fn recent_years(today: NaiveDate, first: u32, _count: u32) -> Vec<i32> {
    let newest = if first <= today.month() {
        today.year()
    } else {
        today.year() - 1
    };
    (0..YEARS_BACK).map(|k| newest - k).collect()
}

fn relative_period(which: &str, unit: &str, today: NaiveDate) -> Option<TimeWindow> {
    let back = i64::from(which == "last");
    match unit {
        "week" | "weekend" => {
            let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
            let start = monday - Duration::weeks(back);
            if which == "past" {
                return Some(TimeWindow::days(
                    today - Duration::days(7),
                    today + Duration::days(1),
                ));
            }
            Some(TimeWindow::days(start, start + Duration::days(7)))
        }
        "month" => {
            if which == "past" {
                return Some(TimeWindow::days(
                    today - Duration::days(30),
                    today + Duration::days(1),
                ));
            }
            let (mut y, mut m) = (today.year(), today.month());
            if back == 1 {
                if m == 1 {
                    y -= 1;
                    m = 12;
                } else {
                    m -= 1;
                }
            }
            TimeWindow::month(y, m)
        }
        "year" => {
            if which == "past" {
                return Some(TimeWindow::days(
                    today - Duration::days(365),
                    today + Duration::days(1),
                ));
            }
            TimeWindow::year(today.year() - back as i32)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        // Wednesday 16 August 2023, 10:00.
        Utc.with_ymd_and_hms(2023, 8, 16, 10, 0, 0).unwrap()
    }

    fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn spans(q: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        windows(q, now())
            .into_iter()
            .map(|w| (w.since, w.until))
            .collect()
    }

    #[test]
    fn absolute_days_in_the_usual_shapes() {
        let may25 = vec![(day(2022, 5, 24), day(2022, 5, 27))];
        for q in [
            "What did Nate do for Joanna on 25 May, 2022?",
            "What did Nate do on May 25, 2022?",
            "what happened on may 25th 2022",
            "the 25th of May 2022",
            "on 2022-05-25 what did I eat",
        ] {
            assert_eq!(spans(q), may25, "{q}");
        }
    }

    #[test]
    fn months_seasons_and_years() {
        assert_eq!(
            spans("What recognition did Maria receive in August 2023?"),
            vec![(day(2023, 8, 1), day(2023, 9, 1))]
        );
        assert_eq!(
            spans("What state did Joanna visit in summer 2021?"),
            vec![(day(2021, 6, 1), day(2021, 9, 1))]
        );
        assert_eq!(
            spans("Which tournament did Nate win in the beginning of November 2022?"),
            vec![(day(2022, 11, 1), day(2022, 12, 1))]
        );
        assert_eq!(
            spans("what did we do in 2021"),
            vec![(day(2021, 1, 1), day(2022, 1, 1))]
        );
        // A month without a year: the most recent ones.
        assert_eq!(
            spans("When did Melanie go camping in June?"),
            vec![
                (day(2023, 6, 1), day(2023, 7, 1)),
                (day(2022, 6, 1), day(2022, 7, 1)),
                (day(2021, 6, 1), day(2021, 7, 1)),
            ]
        );
        // September has not come yet this year.
        assert_eq!(
            spans("in september")[0],
            (day(2022, 9, 1), day(2022, 10, 1))
        );
    }

    #[test]
    fn words_that_only_look_like_dates_are_not() {
        for q in [
            "May I ask what you like?",
            "I march for causes I believe in",
            "Who won 2 games?",
            "What is 2022 plus one",
            "What did Jon take a trip to Rome for?",
            "",
        ] {
            assert!(spans(q).is_empty(), "{q}: {:?}", spans(q));
        }
    }

    #[test]
    fn relative_to_now() {
        assert_eq!(
            spans("yesterday"),
            vec![(day(2023, 8, 14), day(2023, 8, 17))]
        );
        // The calendar week before the one of Wednesday 16 August.
        assert_eq!(
            spans("what did I read last week?"),
            vec![(day(2023, 8, 7), day(2023, 8, 14))]
        );
        assert_eq!(
            spans("last month"),
            vec![(day(2023, 7, 1), day(2023, 8, 1))]
        );
        assert_eq!(spans("this year"), vec![(day(2023, 1, 1), day(2024, 1, 1))]);
        assert_eq!(
            spans("three days ago"),
            vec![(day(2023, 8, 12), day(2023, 8, 15))]
        );
        assert_eq!(
            spans("2 weeks ago"),
            vec![(day(2023, 7, 29), day(2023, 8, 7))]
        );
    }

    #[test]
    fn several_expressions_and_the_cap() {
        let w = windows("between 1 May 2022 and 3 June 2022", now());
        assert_eq!(w.len(), 2);
        assert!(w[0].contains(day(2022, 5, 1)));
        assert!(w[1].contains(day(2022, 6, 3)));
        let many = "in 2001 in 2002 in 2003 in 2004 in 2005 in 2006 in 2007 in 2008";
        assert_eq!(windows(many, now()).len(), MAX_WINDOWS);
    }
}
