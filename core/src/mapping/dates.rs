//! jq's date builtins as libjq runs them on glibc, which Ocean's mappings see: `mktime` is
//! `timegm` (fields out of range roll over: February 29th of 2019 is March 1st, second 60 is the
//! next minute), `gmtime` reaches any year an `int` holds, `strptime` reads fields without
//! checking the calendar and `strftime` prints glibc's fields. Times are UTC throughout.

use jaq_core::native::{Fun, bome, run, v};
use jaq_core::{Cv, Error, ValR};
use jaq_json::Val;

use super::jq::Data;
use super::value::type_name;

pub fn funs() -> impl Iterator<Item = Fun<Data>> {
    [
        run(("_mktime", v(0), |cv: Cv<Data>| bome(mktime(&cv.1)))),
        run(("_gmtime", v(0), |cv: Cv<Data>| bome(gmtime(&cv.1)))),
        run(("_strftime", v(1), |mut cv: Cv<Data>| {
            let format = cv.0.pop_var();
            bome(strftime(&cv.1, &format))
        })),
        run(("_strptime", v(1), |mut cv: Cv<Data>| {
            let format = cv.0.pop_var();
            bome(strptime(&cv.1, &format))
        })),
    ]
    .into_iter()
}

const DAY: i64 = 86_400;
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
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

/// Days from 1970-01-01 to `year`-`month`-`day` (month 1–12, day 1–31) in the proleptic
/// Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month 1–12, day) of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// A broken-down time, normalised: what glibc's `gmtime` fills in.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tm {
    year: i64,
    /// 0–11.
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    weekday: i64,
    /// 0–365.
    yearday: i64,
}

impl Tm {
    fn from_epoch(seconds: i64) -> Option<Self> {
        let days = seconds.div_euclid(DAY);
        let rest = seconds.rem_euclid(DAY);
        let (year, month, day) = civil_from_days(days);
        // glibc fails where the year leaves an `int`.
        i32::try_from(year - 1900).ok()?;
        Some(Tm {
            year,
            month: month - 1,
            day,
            hour: rest / 3600,
            minute: rest % 3600 / 60,
            second: rest % 60,
            weekday: (days + 4).rem_euclid(7),
            yearday: days - days_from_civil(year, 1, 1),
        })
    }

    /// `timegm` of raw fields: whatever is out of range rolls over into the next field.
    fn epoch_of(fields: [i64; 6]) -> i64 {
        let [year, month, day, hour, minute, second] = fields;
        let months = year * 12 + month;
        let days = days_from_civil(months.div_euclid(12), months.rem_euclid(12) + 1, 1) + day - 1;
        days * DAY + hour * 3600 + minute * 60 + second
    }
}

fn number(value: &Val) -> Option<f64> {
    jaq_std::ValT::as_f64(value)
}

/// The first six fields of a broken-down time array (missing ones 0), each truncated as C's
/// `(int)` does.
fn fields_of(value: &Val, name: &str) -> Result<[i64; 6], Error<Val>> {
    let Val::Arr(items) = value else {
        return Err(Error::str(format!("{name} requires array inputs")));
    };
    let mut fields = [0i64; 6];
    for (slot, item) in fields.iter_mut().zip(items.iter()) {
        let n = number(item)
            .ok_or_else(|| Error::str(format!("{name} requires parsed datetime inputs")))?;
        *slot = n as i64;
    }
    Ok(fields)
}

fn mktime(value: &Val) -> ValR<Val> {
    let seconds = Tm::epoch_of(fields_of(value, "mktime")?);
    Ok(Val::from(seconds as isize))
}

fn out_of_range() -> Error<Val> {
    Error::str("error converting number of seconds since epoch to datetime")
}

fn gmtime(value: &Val) -> ValR<Val> {
    let seconds = number(value).ok_or_else(|| Error::str("gmtime() requires a number"))?;
    if !seconds.is_finite() || seconds.abs() > 1e17 {
        return Err(out_of_range());
    }
    let tm = Tm::from_epoch(seconds.trunc() as i64).ok_or_else(out_of_range)?;
    // libjq: the whole seconds of `(time_t)x`, plus `x - floor(x)`.
    let fraction = seconds - seconds.floor();
    let second = if fraction == 0.0 {
        Val::from(tm.second as isize)
    } else {
        Val::from(tm.second as f64 + fraction)
    };
    Ok([
        Val::from(tm.year as isize),
        Val::from(tm.month as isize),
        Val::from(tm.day as isize),
        Val::from(tm.hour as isize),
        Val::from(tm.minute as isize),
        second,
        Val::from(tm.weekday as isize),
        Val::from(tm.yearday as isize),
    ]
    .into_iter()
    .collect())
}

fn text_of(value: &Val) -> Option<String> {
    match value {
        Val::TStr(bytes) | Val::BStr(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    }
}

fn strftime(value: &Val, format: &Val) -> ValR<Val> {
    let format =
        text_of(format).ok_or_else(|| Error::str("strftime/1 requires a string format"))?;
    let epoch = match value {
        Val::Num(_) => {
            let seconds = number(value).unwrap_or(f64::NAN);
            if !seconds.is_finite() || seconds.abs() > 1e17 {
                return Err(out_of_range());
            }
            seconds.trunc() as i64
        }
        Val::Arr(_) => Tm::epoch_of(fields_of(value, "strftime/1")?),
        other => {
            return Err(Error::str(format!(
                "strftime/1 requires parsed datetime inputs, not {}",
                type_name(other)
            )));
        }
    };
    let tm = Tm::from_epoch(epoch).ok_or_else(out_of_range)?;
    Ok(Val::from(format_tm(&tm, epoch, &format)))
}

/// The ISO 8601 week-based year and week of `tm`.
fn iso_week(tm: &Tm) -> (i64, i64) {
    let iso_weekday = (tm.weekday + 6) % 7; // Monday 0
    let thursday = tm.yearday - iso_weekday + 3;
    let days_in = |year: i64| days_from_civil(year + 1, 1, 1) - days_from_civil(year, 1, 1);
    if thursday < 0 {
        let previous = days_in(tm.year - 1);
        return (tm.year - 1, (thursday + previous) / 7 + 1);
    }
    if thursday >= days_in(tm.year) {
        return (tm.year + 1, 1);
    }
    (tm.year, thursday / 7 + 1)
}

/// glibc's `strftime` of a UTC time (`%Z` is "GMT").
fn format_tm(tm: &Tm, epoch: i64, format: &str) -> String {
    let mut out = String::new();
    let mut chars = format.chars();
    let hour12 = if tm.hour % 12 == 0 { 12 } else { tm.hour % 12 };
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let piece = match spec {
            'Y' => tm.year.to_string(),
            'C' => format!("{:02}", tm.year.div_euclid(100)),
            'y' => format!("{:02}", tm.year.rem_euclid(100)),
            'G' => iso_week(tm).0.to_string(),
            'g' => format!("{:02}", iso_week(tm).0.rem_euclid(100)),
            'V' => format!("{:02}", iso_week(tm).1),
            'm' => format!("{:02}", tm.month + 1),
            'd' => format!("{:02}", tm.day),
            'e' => format!("{:2}", tm.day),
            'H' => format!("{:02}", tm.hour),
            'k' => format!("{:2}", tm.hour),
            'I' => format!("{hour12:02}"),
            'l' => format!("{hour12:2}"),
            'M' => format!("{:02}", tm.minute),
            'S' => format!("{:02}", tm.second),
            'j' => format!("{:03}", tm.yearday + 1),
            'a' => WEEKDAYS[tm.weekday as usize][..3].to_owned(),
            'A' => WEEKDAYS[tm.weekday as usize].to_owned(),
            'b' | 'h' => MONTHS[tm.month as usize][..3].to_owned(),
            'B' => MONTHS[tm.month as usize].to_owned(),
            'p' => if tm.hour < 12 { "AM" } else { "PM" }.to_owned(),
            'P' => if tm.hour < 12 { "am" } else { "pm" }.to_owned(),
            'u' => (if tm.weekday == 0 { 7 } else { tm.weekday }).to_string(),
            'w' => tm.weekday.to_string(),
            'U' => format!("{:02}", (tm.yearday + 7 - tm.weekday) / 7),
            'W' => format!("{:02}", (tm.yearday + 7 - (tm.weekday + 6) % 7) / 7),
            'Z' => "GMT".to_owned(),
            'z' => "+0000".to_owned(),
            's' => epoch.to_string(),
            'n' => "\n".to_owned(),
            't' => "\t".to_owned(),
            '%' => "%".to_owned(),
            'c' => format_tm(tm, epoch, "%a %b %e %H:%M:%S %Y"),
            'x' | 'D' => format_tm(tm, epoch, "%m/%d/%y"),
            'X' | 'T' => format_tm(tm, epoch, "%H:%M:%S"),
            'F' => format_tm(tm, epoch, "%Y-%m-%d"),
            'R' => format_tm(tm, epoch, "%H:%M"),
            'r' => format_tm(tm, epoch, "%I:%M:%S %p"),
            other => format!("%{other}"),
        };
        out.push_str(&piece);
    }
    out
}

/// Fields `strptime` read; unset ones stay as libjq's zeroed `struct tm` has them.
#[derive(Debug, Default)]
struct Parsed {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    pm: Option<bool>,
    has_date: bool,
    yearday: Option<i64>,
}

/// Reads `input` from `at` as glibc's `get_number`: spaces skipped, then up to `width` digits,
/// stopping early where one more would pass `max`; `None` unless in `min..=max`.
fn read_number(input: &[u8], at: &mut usize, width: usize, min: i64, max: i64) -> Option<i64> {
    while input.get(*at) == Some(&b' ') {
        *at += 1;
    }
    let mut value: i64 = 0;
    let mut read = 0;
    while read < width {
        match input.get(*at) {
            Some(d) if d.is_ascii_digit() && (read == 0 || value * 10 <= max) => {
                value = value * 10 + i64::from(d - b'0');
                *at += 1;
                read += 1;
            }
            _ => break,
        }
    }
    (read > 0 && (min..=max).contains(&value)).then_some(value)
}

/// A name from `names` (full or its first three letters, any case) at `at`; its index.
fn read_name(input: &[u8], at: &mut usize, names: &[&str]) -> Option<i64> {
    let rest = &input[*at..];
    for (index, name) in names.iter().enumerate() {
        for candidate in [*name, &name[..3]] {
            if rest.len() >= candidate.len()
                && rest[..candidate.len()].eq_ignore_ascii_case(candidate.as_bytes())
            {
                *at += candidate.len();
                return Some(index as i64);
            }
        }
    }
    None
}

/// Reads `input` at `at` by `format` into `tm`; `None` when it does not match.
fn parse_into(input: &[u8], at: &mut usize, format: &str, tm: &mut Parsed) -> Option<()> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            while input.get(*at).is_some_and(u8::is_ascii_whitespace) {
                *at += 1;
            }
            continue;
        }
        if c != '%' {
            let mut buf = [0u8; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            if !input[*at..].starts_with(bytes) {
                return None;
            }
            *at += bytes.len();
            continue;
        }
        match chars.next()? {
            'Y' => {
                tm.year = read_number(input, at, 4, 0, 9999)?;
                tm.has_date = true;
            }
            'y' => {
                let y = read_number(input, at, 2, 0, 99)?;
                tm.year = if y < 69 { 2000 + y } else { 1900 + y };
                tm.has_date = true;
            }
            'C' => {
                let century = read_number(input, at, 2, 0, 99)?;
                tm.year = century * 100 + tm.year.rem_euclid(100);
            }
            'm' => {
                tm.month = read_number(input, at, 2, 1, 12)? - 1;
                tm.has_date = true;
            }
            'd' | 'e' => {
                tm.day = read_number(input, at, 2, 1, 31)?;
                tm.has_date = true;
            }
            'H' | 'k' => tm.hour = read_number(input, at, 2, 0, 23)?,
            'I' | 'l' => tm.hour = read_number(input, at, 2, 1, 12)? % 12,
            'M' => tm.minute = read_number(input, at, 2, 0, 59)?,
            'S' => tm.second = read_number(input, at, 2, 0, 61)?,
            'j' => tm.yearday = Some(read_number(input, at, 3, 1, 366)? - 1),
            'b' | 'B' | 'h' => {
                tm.month = read_name(input, at, &MONTHS)?;
                tm.has_date = true;
            }
            'a' | 'A' => {
                read_name(input, at, &WEEKDAYS)?;
            }
            'p' | 'P' => {
                let rest = &input[*at..];
                let pm = if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case(b"am") {
                    false
                } else if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case(b"pm") {
                    true
                } else {
                    return None;
                };
                *at += 2;
                tm.pm = Some(pm);
            }
            'z' => {
                // Read and, as in libjq (whose mktime is timegm), not applied.
                if input.get(*at) == Some(&b'Z') {
                    *at += 1;
                } else {
                    let sign = *input.get(*at)?;
                    if sign != b'+' && sign != b'-' {
                        return None;
                    }
                    *at += 1;
                    read_number(input, at, 2, 0, 99)?;
                    if input.get(*at) == Some(&b':') {
                        *at += 1;
                    }
                    let mut minutes = *at;
                    if read_number(input, &mut minutes, 2, 0, 59).is_some() {
                        *at = minutes;
                    }
                }
            }
            'Z' => {
                while input.get(*at).is_some_and(|b| !b.is_ascii_whitespace()) {
                    *at += 1;
                }
            }
            's' => {
                let start = *at;
                if input.get(*at) == Some(&b'-') {
                    *at += 1;
                }
                while input.get(*at).is_some_and(u8::is_ascii_digit) {
                    *at += 1;
                }
                let seconds: i64 = std::str::from_utf8(&input[start..*at]).ok()?.parse().ok()?;
                let t = Tm::from_epoch(seconds)?;
                (tm.year, tm.month, tm.day) = (t.year, t.month, t.day);
                (tm.hour, tm.minute, tm.second) = (t.hour, t.minute, t.second);
                tm.has_date = true;
            }
            'n' | 't' => {
                while input.get(*at).is_some_and(u8::is_ascii_whitespace) {
                    *at += 1;
                }
            }
            '%' => {
                if input.get(*at) != Some(&b'%') {
                    return None;
                }
                *at += 1;
            }
            'T' => parse_into(input, at, "%H:%M:%S", tm)?,
            'D' => parse_into(input, at, "%m/%d/%y", tm)?,
            'F' => parse_into(input, at, "%Y-%m-%d", tm)?,
            'R' => parse_into(input, at, "%H:%M", tm)?,
            _ => return None,
        }
    }
    Some(())
}

fn strptime(value: &Val, format: &Val) -> ValR<Val> {
    let (Some(input), Some(format)) = (text_of(value), text_of(format)) else {
        return Err(Error::str(
            "strptime/1 requires string inputs and arguments",
        ));
    };
    let mut tm = Parsed {
        year: 1900,
        ..Parsed::default()
    };
    let bytes = input.as_bytes();
    let mut at = 0;
    if parse_into(bytes, &mut at, &format, &mut tm).is_none() {
        return Err(Error::str(format!(
            "date {} does not match format {}",
            serde_json::Value::from(input.clone()),
            serde_json::Value::from(format)
        )));
    }
    if tm.pm == Some(true) {
        tm.hour += 12;
    }
    // glibc works out the weekday and day of the year from a date it read (libjq's markers 8
    // and 367 otherwise), rolling an impossible day over as `timegm` would.
    let (weekday, yearday) = if tm.has_date {
        let days = days_from_civil(tm.year, tm.month + 1, tm.day);
        (
            (days + 4).rem_euclid(7),
            days - days_from_civil(tm.year, 1, 1),
        )
    } else {
        (8, tm.yearday.unwrap_or(367))
    };
    let mut out: Vec<Val> = [
        tm.year, tm.month, tm.day, tm.hour, tm.minute, tm.second, weekday, yearday,
    ]
    .into_iter()
    .map(|n| Val::from(n as isize))
    .collect();
    // libjq hands back what the format did not read as a ninth element.
    if at < bytes.len() {
        out.push(Val::from(input[at..].to_owned()));
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_round_trip_across_eras() {
        for days in [-800_000, -719_468, -1, 0, 1, 59, 10_957, 19_000, 20_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{days}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
    }

    #[test]
    fn timegm_rolls_fields_over() {
        // 2019-02-29 10:00 is 2019-03-01 10:00; month 12 is January of the next year, 13 February.
        assert_eq!(Tm::epoch_of([2019, 1, 29, 10, 0, 0]), 1_551_434_400);
        assert_eq!(Tm::epoch_of([2019, 12, 1, 0, 0, 0]), 1_577_836_800);
        assert_eq!(Tm::epoch_of([2019, 13, 1, 0, 0, 0]), 1_580_515_200);
        assert_eq!(Tm::epoch_of([2016, 11, 31, 23, 59, 60]), 1_483_228_800);
    }

    #[test]
    fn far_years_print_whole() {
        let tm = Tm::from_epoch(1_718_000_000_000).unwrap();
        assert_eq!(
            format_tm(&tm, 0, "%Y-%m-%dT%H:%M:%SZ"),
            "56411-04-03T06:13:20Z"
        );
        assert!(Tm::from_epoch(i64::MAX / 2).is_none());
    }
}
