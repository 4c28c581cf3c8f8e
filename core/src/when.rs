//! Time expressions in queries: "on 25 May, 2022", "in August 2023", "in June", "last week",
//! "3 days ago", "summer 2021" become windows of time that retrieval can boost or search in.
//!
//! The parser is deliberately small and lexical (no model): it reads absolute dates in the
//! common English shapes (day month year, month day year, ISO), months and seasons with or
//! without a year, years after a preposition, and relative expressions resolved against the
//! caller's "now". A date written without a year ("in June") could be any June, so it yields
//! one window per year for the last [`YEARS_BACK`] years. Windows of a day are widened by a
//! day on each side: the query's time zone is not known.
//!
//! The same parser reads the date text of a memory against the time it was written
//! ([`mentions`]: "I went camping last week", said on 16 August 2023, names 7–13 August), so
//! that a question about a time finds what happened then and not only what was said then.
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// How many past years a month or season without a year stands for.
pub const YEARS_BACK: i32 = 3;

/// The most windows one query yields.
pub const MAX_WINDOWS: usize = 6;

/// The most windows a memory's text is given ([`mentions`]).
pub const MAX_MENTIONS: usize = 3;

/// What the text is: a question, or something said at a known time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A query: a date without a year stands for each of the recent years.
    Query,
    /// A memory: only what resolves to one span counts, and the day it was said adds nothing.
    Memory,
}

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

    /// A calendar day as it is.
    fn exact_day(d: NaiveDate) -> Self {
        Self::days(d, d + Duration::days(1))
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

/// A date written `2023-05-03`, in the years [`year_of`] takes (chrono's `%Y` also reads a
/// signed year of any length, `+262143-12-31`, at the edge of the dates it can add to).
fn iso_date(word: &str) -> Option<NaiveDate> {
    let d = NaiveDate::parse_from_str(word, "%Y-%m-%d").ok()?;
    year_of(word.get(..4)?).filter(|&y| y == d.year())?;
    Some(d)
}

/// The windows of time a query names, earliest-mentioned first (at most [`MAX_WINDOWS`]);
/// empty when it names none.
pub fn windows(query: &str, now: DateTime<Utc>) -> Vec<TimeWindow> {
    scan(query, now, Reading::Query)
}

/// The windows of time a memory's text names, resolved against `said_at`, the time it was
/// written: "yesterday", "last week", "two months ago", "last Saturday", "next month",
/// "on 3 May 2023". Expressions that do not resolve to one span ("in June", "on Friday")
/// and windows that hold `said_at` itself ("today", "this year") are left out; at most
/// [`MAX_MENTIONS`], earliest-mentioned first.
pub fn mentions(text: &str, said_at: DateTime<Utc>) -> Vec<TimeWindow> {
    let mut out = scan(text, said_at, Reading::Memory);
    out.retain(|w| !w.contains(said_at));
    out.truncate(MAX_MENTIONS);
    out
}

/// Whether a query asks for a time: "When did…", "How long has…", "In what year…". Such a
/// question is answered by a turn that names one ("I went yesterday", "for 3 years now"):
/// the answer type of a question-answering system, here the one type that text alone tells.
pub fn asks_time(query: &str) -> bool {
    let words = lower_words(query);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    word(0) == "when"
        || (0..words.len()).any(|i| match (word(i), word(i + 1)) {
            ("how", "long" | "often") | ("since", "when") => true,
            ("what" | "which", unit) => matches!(
                unit,
                "year" | "month" | "date" | "day" | "week" | "time" | "season"
            ),
            _ => false,
        })
}

/// Whether a text names a time in any of the shapes of a temporal expression (TimeML's
/// dates, durations and sets), resolvable or not: "yesterday", "last week", "two months
/// ago", "for 3 years", "every weekend", "on Friday", "in May", "2022", "recently". Used
/// with [`asks_time`]; [`mentions`] is what resolves them.
pub fn names_time(text: &str) -> bool {
    const DEICTIC: [&str; 9] = [
        "yesterday",
        "today",
        "tonight",
        "tomorrow",
        "ago",
        "recently",
        "lately",
        "weekend",
        "weekends",
    ];
    const UNITS: [&str; 7] = [
        "day", "night", "week", "month", "year", "morning", "evening",
    ];
    const QUANTIFIERS: [&str; 12] = [
        "last", "this", "next", "past", "every", "few", "couple", "several", "each", "whole",
        "all", "other",
    ];
    let words = lower_words(text);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    (0..words.len()).any(|i| {
        let w = word(i).trim_end_matches("'s");
        let prev = if i == 0 { "" } else { word(i - 1) };
        let unit = w.strip_suffix('s').unwrap_or(w);
        DEICTIC.contains(&w)
            || WEEKDAYS.contains(&unit)
            || iso_date(w).is_some()
            || year_of(w).is_some()
            // "may" and "march" are months only next to a day, a year or a preposition.
            || (month_of(w).is_some()
                && (w.len() > 3 || w == "may")
                && (!matches!(w, "may" | "march")
                    || TIME_PREPOSITIONS.contains(&prev)
                    || day_of(word(i + 1)).is_some()
                    || year_of(word(i + 1)).is_some()))
            || (season_of(w).is_some()
                && (TIME_PREPOSITIONS.contains(&prev) || QUANTIFIERS.contains(&prev)))
            || (UNITS.contains(&unit)
                && (QUANTIFIERS.contains(&prev) || number_of(prev).is_some()))
    })
}

/// A text's words, lowercase, without the punctuation around them (typographic quotes,
/// dashes and ellipses too) and without a possessive's `'s` ("yesterday's", "last week’s").
fn lower_words(text: &str) -> Vec<String> {
    text.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                ',' | '?' | '!' | '(' | ')' | '"' | '“' | '”' | '…' | '—' | '–'
            )
    })
    .map(|w| {
        let w = w.trim_end_matches(['.', ';', ':']).to_lowercase();
        let w = w
            .strip_suffix("'s")
            .or_else(|| w.strip_suffix("’s"))
            .unwrap_or(&w);
        w.trim_matches(['\'', '‘', '’']).to_owned()
    })
    .filter(|w| !w.is_empty())
    .collect()
}

fn scan(query: &str, now: DateTime<Utc>, reading: Reading) -> Vec<TimeWindow> {
    // Windows are resolved a thousand years either way at most; a reference time far beyond
    // any real one (a memory's `created_at` is the caller's) resolves none, rather than
    // reaching the end of the calendar.
    if !(1..=9999).contains(&now.year()) {
        return Vec::new();
    }
    let ambiguous_ok = reading == Reading::Query;
    // A query's days are widened (its time zone is not known); a memory's are the days it
    // names, so that "yesterday" does not reach the day it was said.
    let day_window: fn(NaiveDate) -> TimeWindow = match reading {
        Reading::Query => TimeWindow::day,
        Reading::Memory => TimeWindow::exact_day,
    };
    let words = lower_words(query);
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
            push(day_window(d), &mut out);
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
                if year.is_some() || ambiguous_ok {
                    dated(d, m, year, today, day_window, &mut out, &mut push);
                }
                i += 2 + of + usize::from(year.is_some());
                continue;
            }
        }
        if let Some(m) = month_of(w) {
            // Month Day [Year] ("may 25, 2022").
            if let Some(d) = day_of(word(i + 1)) {
                let year = year_of(word(i + 2));
                if year.is_some() || ambiguous_ok {
                    dated(d, m, year, today, day_window, &mut out, &mut push);
                }
                i += 2 + usize::from(year.is_some());
                continue;
            }
            // Month [of] Year ("august 2023", "may of 2022").
            let of = usize::from(word(i + 1) == "of");
            if let Some(y) = year_of(word(i + 1 + of)) {
                if let Some(win) = TimeWindow::month(y, m) {
                    push(win, &mut out);
                }
                i += 2 + of;
                continue;
            }
            // A bare month after a preposition ("in june", "early may").
            if ambiguous_ok
                && (TIME_PREPOSITIONS.contains(&prev(i)) || matches!(prev(i), "this" | "last"))
            {
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
            // Season [of] Year ("summer 2021", "the summer of 2021").
            let of = usize::from(word(i + 1) == "of");
            if let Some(y) = year_of(word(i + 1 + of)) {
                if let Some(win) = TimeWindow::months(y, first, count) {
                    push(win, &mut out);
                }
                i += 2 + of;
                continue;
            }
            if ambiguous_ok
                && (TIME_PREPOSITIONS.contains(&prev(i)) || matches!(prev(i), "this" | "last"))
            {
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
            ("yesterday", _) | ("last", "night") => {
                push(day_window(today - Duration::days(1)), &mut out)
            }
            ("today" | "tonight", _) => push(day_window(today), &mut out),
            ("tomorrow", _) => push(day_window(today + Duration::days(1)), &mut out),
            ("last" | "this" | "past" | "next", unit @ ("week" | "weekend" | "month" | "year")) => {
                if let Some(win) = relative_period(w, unit, today, reading) {
                    push(win, &mut out);
                }
                i += 2;
                continue;
            }
            // "last saturday": the latest one before today; "next friday": the first after.
            ("last" | "next", day) if WEEKDAYS.contains(&day) => {
                let target = WEEKDAYS.iter().position(|d| *d == day).unwrap_or(0) as i64;
                let now_wd = i64::from(today.weekday().num_days_from_monday());
                let offset = if w == "last" {
                    -((now_wd - target - 1).rem_euclid(7) + 1)
                } else {
                    (target - now_wd - 1).rem_euclid(7) + 1
                };
                push(day_window(today + Duration::days(offset)), &mut out);
                i += 2;
                continue;
            }
            _ => {}
        }
        // "in N days/weeks/months" (ahead).
        if w == "in"
            && let Some(n) = number_of(word(i + 1))
            && let Some((ahead, slack)) = span_of(word(i + 2).trim_end_matches('s'), n)
        {
            let centre = today + ahead;
            push(
                TimeWindow::days(centre - slack, centre + slack + Duration::days(1)),
                &mut out,
            );
            i += 3;
            continue;
        }
        // "N days/weeks/months/years ago".
        if let Some(n) = number_of(w)
            && word(i + 2) == "ago"
            && let Some((back, slack)) = span_of(word(i + 1).trim_end_matches('s'), n)
        {
            let centre = today - back;
            push(
                TimeWindow::days(centre - slack, centre + slack + Duration::days(1)),
                &mut out,
            );
            i += 3;
            continue;
        }
        i += 1;
    }
    out
}

/// `n` units of time, and the slack either side of the day they reach.
fn span_of(unit: &str, n: i64) -> Option<(Duration, Duration)> {
    match unit {
        "day" => Some((Duration::days(n), Duration::days(1))),
        "week" => Some((Duration::weeks(n), Duration::days(4))),
        "month" => Some((Duration::days(30 * n), Duration::days(16))),
        "year" => Some((Duration::days(365 * n), Duration::days(183))),
        _ => None,
    }
}

/// A day and month with or without a year (without: each of the recent years in which that
/// day has already come).
fn dated(
    d: u32,
    m: u32,
    year: Option<i32>,
    today: NaiveDate,
    day_window: fn(NaiveDate) -> TimeWindow,
    out: &mut Vec<TimeWindow>,
    push: &mut impl FnMut(TimeWindow, &mut Vec<TimeWindow>),
) {
    match year {
        Some(y) => {
            if let Some(date) = NaiveDate::from_ymd_opt(y, m, d) {
                push(day_window(date), out);
            }
        }
        None => {
            // The years in which that day has come by today.
            let newest = if (m, d) <= (today.month(), today.day()) {
                today.year()
            } else {
                today.year() - 1
            };
            for y in (0..YEARS_BACK).map(|k| newest - k) {
                if let Some(date) = NaiveDate::from_ymd_opt(y, m, d) {
                    push(day_window(date), out);
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

fn relative_period(
    which: &str,
    unit: &str,
    today: NaiveDate,
    reading: Reading,
) -> Option<TimeWindow> {
    // Periods back (negative: ahead).
    let back = match which {
        "last" => 1,
        "next" => -1,
        _ => 0,
    };
    match unit {
        // Saturday and Sunday: this week's, last week's or next week's (weeks from Monday);
        // "past weekend" is the latest one begun by today. A query's are widened a day each
        // way, as its days are (its time zone is not known).
        "weekend" => {
            let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
            let saturday = monday + Duration::days(5);
            let start = match which {
                "past" if today >= saturday => saturday,
                "past" => saturday - Duration::weeks(1),
                _ => saturday - Duration::weeks(back),
            };
            let widen = Duration::days(i64::from(reading == Reading::Query));
            Some(TimeWindow::days(
                start - widen,
                start + Duration::days(2) + widen,
            ))
        }
        "week" => {
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
            // Months since year 0, moved back or ahead.
            let months = i64::from(today.year()) * 12 + i64::from(today.month0()) - back;
            TimeWindow::month(
                i32::try_from(months.div_euclid(12)).ok()?,
                u32::try_from(months.rem_euclid(12)).ok()? + 1,
            )
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

    /// Dates at the edge of the calendar, in the text or as the time it was said, resolve to
    /// nothing (they panicked: a day after the last date chrono knows).
    #[test]
    fn dates_at_the_calendar_s_edge_name_no_time() {
        for text in [
            "on +262143-12-31",
            "on -262144-01-01",
            "on +2023-05-03",
            "on 12023-05-03",
        ] {
            assert!(windows(text, now()).is_empty(), "{text}");
            assert!(mentions(text, now()).is_empty(), "{text}");
        }
        let far = DateTime::<Utc>::MAX_UTC;
        for text in [
            "tomorrow",
            "yesterday",
            "in 1000 years",
            "last week",
            "next month",
        ] {
            assert!(mentions(text, far).is_empty(), "{text}");
            assert!(
                mentions(text, DateTime::<Utc>::MIN_UTC).is_empty(),
                "{text}"
            );
        }
        // A plain ISO date still names its day.
        assert_eq!(
            spans("what happened on 2023-05-03?"),
            [(day(2023, 5, 2), day(2023, 5, 5))]
        );
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
    fn questions_that_ask_for_a_time() {
        for q in [
            "When did Caroline go to the LGBTQ support group?",
            "when is Jon's grand opening",
            "How long has Nate had his first two turtles?",
            "How often does Maria volunteer?",
            "In what year did Joanna start writing?",
            "Which month was the trip in?",
            "Since when has he played?",
        ] {
            assert!(asks_time(q), "{q}");
        }
        for q in [
            "What did Melanie paint?",
            "What did Jon do when the studio opened?",
            "How many children does Melanie have?",
            "What movie did Joanna watch on 1 May, 2022?",
            "Which long trail did they hike?",
        ] {
            assert!(!asks_time(q), "{q}");
        }
    }

    #[test]
    fn texts_that_name_a_time() {
        for t in [
            "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.",
            "Nate: I've had them for 3 years now and they bring me tons of joy!",
            "Jon: We open the studio next week!",
            "Gina: I lost my job a few months ago.",
            "Maria: I volunteer there every weekend.",
            "John: On Friday we met the mayor.",
            "Joanna: I finished it in May, right before the trip.",
            "Joanna: It came out on May 3 and sold out.",
            "Nate: Back in 2019 I won my first tournament.",
            "Melanie: We went camping this summer.",
            "Melanie: I ran into her the other day.",
            "Nate: I've been practising a lot recently.",
            "Gina: My Saturdays are for the store.",
        ] {
            assert!(names_time(t), "{t}");
        }
        for t in [
            "Caroline: Thanks, Melanie! That means a lot.",
            "Nate: May I see the painting?",
            "Jon: March on, we'll get there!",
            "Gina: Summer vibes in this photo!",
            "Joanna: I scored 100 points in the game.",
            "Melanie: Have a good one!",
        ] {
            assert!(!names_time(t), "{t}");
        }
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
    fn ahead_of_now_and_named_weekdays() {
        // Wednesday 16 August 2023.
        assert_eq!(
            spans("tomorrow"),
            vec![(day(2023, 8, 16), day(2023, 8, 19))]
        );
        assert_eq!(
            spans("next week"),
            vec![(day(2023, 8, 21), day(2023, 8, 28))]
        );
        assert_eq!(
            spans("next month"),
            vec![(day(2023, 9, 1), day(2023, 10, 1))]
        );
        assert_eq!(spans("next year"), vec![(day(2024, 1, 1), day(2025, 1, 1))]);
        assert_eq!(
            spans("in two weeks"),
            vec![(day(2023, 8, 26), day(2023, 9, 4))]
        );
        // Saturday 12 August, Wednesday 9 August (a week back), Friday 18 August.
        assert_eq!(
            spans("last Saturday"),
            vec![(day(2023, 8, 11), day(2023, 8, 14))]
        );
        assert_eq!(
            spans("last wednesday"),
            vec![(day(2023, 8, 8), day(2023, 8, 11))]
        );
        assert_eq!(
            spans("next Friday"),
            vec![(day(2023, 8, 17), day(2023, 8, 20))]
        );
        assert_eq!(
            spans("last night"),
            vec![(day(2023, 8, 14), day(2023, 8, 17))]
        );
        // "last month" in January is December of the year before.
        assert_eq!(
            windows("last month", day(2024, 1, 10)),
            vec![TimeWindow::month(2023, 12).unwrap()]
        );
    }

    #[test]
    fn a_memory_s_dates_resolve_against_when_it_was_said() {
        let said = now();
        let got = |t: &str| -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
            mentions(t, said)
                .into_iter()
                .map(|w| (w.since, w.until))
                .collect()
        };
        assert_eq!(
            got("Caroline: I went to a support group yesterday, it was great"),
            vec![(day(2023, 8, 15), day(2023, 8, 16))]
        );
        assert_eq!(
            got("My colleagues and I went to a convention together last month."),
            vec![(day(2023, 7, 1), day(2023, 8, 1))]
        );
        assert_eq!(
            got("We got married on 3 May 2019 and moved two years ago"),
            vec![
                (day(2019, 5, 3), day(2019, 5, 4)),
                (day(2021, 2, 14), day(2022, 2, 16)),
            ]
        );
        // What does not resolve to one span, and what holds the day it was said, adds nothing.
        for t in [
            "I love camping in June",
            "See you on Friday",
            "What a day today, and this year has been long",
            "Nothing about time here",
            "my birthday is on 25 May",
        ] {
            assert!(got(t).is_empty(), "{t}: {:?}", got(t));
        }
        // At most three.
        let many = "yesterday, last week, last month, last year and two years ago";
        assert_eq!(mentions(many, said).len(), MAX_MENTIONS);
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

    /// A weekend is its Saturday and Sunday, not its whole week: "last weekend" said on a
    /// Wednesday is matched by a question about that Saturday; "this weekend" said on a
    /// weekday is ahead, so a memory keeps it.
    #[test]
    fn weekends_are_saturday_and_sunday() {
        let said = now(); // Wednesday 16 August 2023.
        let got = |t: &str| {
            mentions(t, said)
                .into_iter()
                .map(|w| (w.since, w.until))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got("We hiked last weekend"),
            [(day(2023, 8, 12), day(2023, 8, 14))]
        );
        assert_eq!(
            got("We hike this weekend"),
            [(day(2023, 8, 19), day(2023, 8, 21))]
        );
        assert_eq!(
            got("this past weekend was fun"),
            [(day(2023, 8, 12), day(2023, 8, 14))]
        );
        assert_eq!(
            got("See you next weekend"),
            [(day(2023, 8, 26), day(2023, 8, 28))]
        );
        // A question's weekend is widened a day each way, as its days are.
        assert_eq!(
            spans("what did I do last weekend?"),
            [(day(2023, 8, 11), day(2023, 8, 15))]
        );
        // The memory is found by a question about its Saturday.
        let memory = mentions("We hiked last weekend", said);
        let asked = windows("what did I do on 12 August 2023?", said);
        assert!(
            asked
                .iter()
                .any(|w| w.since <= memory[0].since && memory[0].until <= w.until),
            "{memory:?} in {asked:?}"
        );
    }

    /// Possessives, typographic quotes and "of" before a year do not hide a time.
    #[test]
    fn possessives_quotes_and_of_a_year() {
        let said = now();
        let yesterday = [(day(2023, 8, 15), day(2023, 8, 16))];
        for t in [
            "Yesterday's concert was loud",
            "The concert yesterday’s crowd loved",
            "It was “yesterday” — honestly…",
        ] {
            let got: Vec<_> = mentions(t, said)
                .into_iter()
                .map(|w| (w.since, w.until))
                .collect();
            assert_eq!(got, yesterday, "{t}");
        }
        assert_eq!(
            spans("what was in last week’s report?"),
            [(day(2023, 8, 7), day(2023, 8, 14))]
        );
        assert_eq!(
            spans("in the summer of 2021"),
            [(day(2021, 6, 1), day(2021, 9, 1))]
        );
        assert_eq!(
            spans("in May of 2022"),
            [(day(2022, 5, 1), day(2022, 6, 1))]
        );
    }

    /// A day without a year stands for the years in which it has come: asked on 16 August,
    /// "25 August" is last year's first.
    #[test]
    fn a_day_without_a_year_has_come_already() {
        let got = spans("what happened on 25 August?");
        assert_eq!(got[0], (day(2022, 8, 24), day(2022, 8, 27)));
        assert!(got.iter().all(|(since, _)| *since < now()), "{got:?}");
        assert_eq!(
            spans("on 15 August")[0],
            (day(2023, 8, 14), day(2023, 8, 17))
        );
    }
}
