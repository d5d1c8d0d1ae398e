//! Season reset schedules: cron expressions, evaluated in UTC.
//!
//! Five fields (`minute hour day-of-month month day-of-week`) as in crontab(5), or six with a
//! leading seconds field; each field takes `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`,
//! lists `a,b`, and month and day names (`JAN`, `MON`). As in cron, when both day fields are
//! restricted a day matches either. The shortcuts `@hourly`, `@daily`, `@weekly` (Sunday 00:00),
//! `@monthly` and `@yearly` are accepted.

use platform::time::{civil_from_days, days_from_civil, weekday};

/// A parsed schedule: for each field, a bit set of the values that match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + min);
    }
    let v: u32 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if v < min || v > max {
        return Err(format!("{v} is outside {min}-{max}"));
    }
    Ok(v)
}

/// Parses one field into a bit set; the bool says whether it restricts (is not `*`).
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| format!("bad step in {item:?}"))?),
            None => (item, 1),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, min, max, names)?, value(b, min, max, names)?)
        } else {
            let v = value(range, min, max, names)?;
            (v, if item.contains('/') { max } else { v })
        };
        if from > to {
            return Err(format!("empty range {range:?}"));
        }
        for v in (from..=to).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok((bits, text != "*"))
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match parts.len() {
            5 => ("0", &parts[..]),
            6 => (parts[0], &parts[1..]),
            n => return Err(format!("a schedule has 5 or 6 fields, this one has {n}")),
        };
        let (seconds, _) = field(seconds, 0, 59, &[])?;
        let (minutes, _) = field(rest[0], 0, 59, &[])?;
        let (hours, _) = field(rest[1], 0, 23, &[])?;
        let (days, days_restricted) = field(rest[2], 1, 31, &[])?;
        let (months, _) = field(rest[3], 1, 12, &MONTHS)?;
        let (mut weekdays, weekdays_restricted) = field(rest[4], 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Schedule { seconds, minutes, hours, days, months, weekdays, days_restricted, weekdays_restricted })
    }
}

impl Schedule {
    fn day_matches(&self, days: i64, day_of_month: i64) -> bool {
        let dom = self.days & (1 << day_of_month) != 0;
        let dow = self.weekdays & (1 << weekday(days)) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first time strictly after `after` (Unix ms) that the schedule fires, in Unix ms; `None`
    /// when it never fires within ten years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let mut t = after.div_euclid(1000) + 1; // whole seconds, strictly later
        let limit = t + 10 * 366 * 86_400;
        while t < limit {
            let days = t.div_euclid(86_400);
            let (year, month, day) = civil_from_days(days);
            let second_of_day = t.rem_euclid(86_400);
            let (hour, minute, second) = (second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60);
            if self.months & (1 << month) == 0 {
                let (y, m) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                t = days_from_civil(y, m, 1) * 86_400;
            } else if !self.day_matches(days, day) {
                t = (days + 1) * 86_400;
            } else if self.hours & (1 << hour) == 0 {
                t = days * 86_400 + (hour + 1) * 3600;
            } else if self.minutes & (1 << minute) == 0 {
                t = days * 86_400 + hour * 3600 + (minute + 1) * 60;
            } else if self.seconds & (1 << second) == 0 {
                t += 1;
            } else {
                return Some(t * 1000);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
        (platform::time::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * 1000
    }

    fn next(expr: &str, from: i64) -> Option<i64> {
        expr.parse::<Schedule>().expect("valid").next_after(from)
    }

    #[test]
    fn common_schedules() {
        let monday_noon = at(2026, 11, 23, 12, 0, 0);
        assert_eq!(next("@weekly", monday_noon), Some(at(2026, 11, 29, 0, 0, 0)), "next Sunday midnight");
        assert_eq!(next("0 0 * * MON", monday_noon), Some(at(2026, 11, 30, 0, 0, 0)));
        assert_eq!(next("@daily", monday_noon), Some(at(2026, 11, 24, 0, 0, 0)));
        assert_eq!(next("@hourly", monday_noon), Some(at(2026, 11, 23, 13, 0, 0)), "strictly after");
        assert_eq!(next("@monthly", monday_noon), Some(at(2026, 12, 1, 0, 0, 0)));
        assert_eq!(next("@yearly", monday_noon), Some(at(2027, 1, 1, 0, 0, 0)));
        assert_eq!(next("*/15 * * * *", at(2026, 11, 23, 12, 7, 30)), Some(at(2026, 11, 23, 12, 15, 0)));
        assert_eq!(next("30 18 * * 1-5", at(2026, 11, 27, 19, 0, 0)), Some(at(2026, 11, 30, 18, 30, 0)), "Friday evening to Monday");
        assert_eq!(next("0 0 29 2 *", monday_noon), Some(at(2028, 2, 29, 0, 0, 0)), "leap day");
        assert_eq!(next("*/2 * * * * *", at(2026, 11, 23, 12, 0, 0) + 500), Some(at(2026, 11, 23, 12, 0, 2)), "seconds field");
        assert_eq!(next("0 0 1,15 * SUN", monday_noon), Some(at(2026, 11, 29, 0, 0, 0)), "either day field");
        assert_eq!(next("0 0 30 2 *", monday_noon), None);
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in
            ["", "* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *", "5-1 * * * *", "x * * * *"]
        {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?} accepted");
        }
    }
}
