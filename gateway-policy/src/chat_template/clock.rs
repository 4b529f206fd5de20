//! transformers' `strftime_now(format)`: the current time formatted as
//! Python's `datetime.now().strftime(format)`, here in UTC (engines in
//! containers run in UTC; a template that prints the date renders as the
//! engine's does on the same day).

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Monday.
    weekday: usize,
    /// 1 = January 1st.
    yday: u32,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Seconds since the Unix epoch to a UTC date (Howard Hinnant's
/// `civil_from_days`).
fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    const BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let leap = u32::from(month > 2 && is_leap(year));
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem / 60 % 60) as u32,
        second: (rem % 60) as u32,
        // 1970-01-01 was a Thursday.
        weekday: (days + 3).rem_euclid(7) as usize,
        yday: BEFORE[month as usize - 1] + day + leap,
    }
}

/// `format` with the C/Python directives `%a %A %b %B %d %-d %e %H %I %j %m
/// %M %p %S %y %Y %Z %z %%`; other `%x` are kept as written.
fn strftime(t: &Civil, format: &str) -> String {
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut d = chars.next();
        let unpadded = d == Some('-');
        if unpadded {
            d = chars.next();
        }
        let num = |n: u32, width: usize| {
            if unpadded {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        let hour12 = if t.hour % 12 == 0 { 12 } else { t.hour % 12 };
        let text = match d {
            Some('a') => DAYS[t.weekday][..3].to_owned(),
            Some('A') => DAYS[t.weekday].to_owned(),
            Some('b') => MONTHS[t.month as usize - 1][..3].to_owned(),
            Some('B') => MONTHS[t.month as usize - 1].to_owned(),
            Some('d') => num(t.day, 2),
            Some('e') => format!("{:2}", t.day),
            Some('H') => num(t.hour, 2),
            Some('I') => num(hour12, 2),
            Some('j') => num(t.yday, 3),
            Some('m') => num(t.month, 2),
            Some('M') => num(t.minute, 2),
            Some('p') => if t.hour < 12 { "AM" } else { "PM" }.to_owned(),
            Some('S') => num(t.second, 2),
            Some('y') => num(t.year.rem_euclid(100) as u32, 2),
            Some('Y') => t.year.to_string(),
            Some('Z') => "UTC".to_owned(),
            Some('z') => "+0000".to_owned(),
            Some('%') => "%".to_owned(),
            Some(other) => format!("%{}{other}", if unpadded { "-" } else { "" }),
            None => "%".to_owned(),
        };
        out.push_str(&text);
    }
    out
}

/// The template function `strftime_now(format)`.
pub(super) fn strftime_now(format: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    strftime(&civil(secs), format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python() {
        // Python: datetime.fromtimestamp(t, timezone.utc).strftime(...).
        let t = civil(1_709_251_199); // 2024-02-29 23:59:59 UTC, a Thursday
        assert_eq!(
            strftime(&t, "%d %b %Y|%A %B %-d, %y|%H:%M:%S %I%p|%j|%e|%% %Q"),
            "29 Feb 2024|Thursday February 29, 24|23:59:59 11PM|060|29|% %Q"
        );
        let t = civil(0);
        assert_eq!(strftime(&t, "%a %Y-%m-%d %H %j"), "Thu 1970-01-01 00 001");
        let t = civil(4_102_444_800); // 2100-01-01, not a leap year
        assert_eq!(strftime(&t, "%a %d %b %Y %j"), "Fri 01 Jan 2100 001");
        let t = civil(951_868_800); // 2000-03-01 (2000 was a leap year)
        assert_eq!(strftime(&t, "%j %a"), "061 Wed");
    }
}
