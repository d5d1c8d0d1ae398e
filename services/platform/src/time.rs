//! Times as the API shows them: RFC 3339 in UTC with milliseconds, from the Unix milliseconds
//! every table stores.

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Formats Unix milliseconds as `2026-11-23T09:41:07.123Z`.
///
/// Digit by digit rather than through `format!`: every record, account and message the API
/// answers with carries two or three of these, and `format!`'s seven padded integers cost about
/// 3,000 instructions a time, a twentieth of a whole `GET /v1/accounts/me`
/// (`loadtest/instructions.sh`). Years outside 0-9999 take `format!`.
pub fn rfc3339(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if !(0..=9999).contains(&year) {
        return format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}Z");
    }
    let mut text = String::with_capacity(24);
    let fields = [(year, 4, '-'), (month, 2, '-'), (day, 2, 'T'), (hour, 2, ':'), (minute, 2, ':'), (second, 2, '.'), (ms, 3, 'Z')];
    for (value, width, after) in fields {
        for place in (0..width).rev() {
            // 0-9: every field is non-negative and below 10^width here.
            let digit = (value / 10_i64.pow(place) % 10) as u8;
            text.push(char::from(b'0' + digit));
        }
        text.push(after);
    }
    text
}

/// Reads the RFC 3339 UTC instants `rfc3339` writes (`2026-11-23T09:41:07.123Z`; the fraction
/// optional, up to nanoseconds, cut to milliseconds) back into Unix milliseconds. Offsets other
/// than `Z` are refused: every time Guildhall writes is UTC, and an event field is one it wrote.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z').or_else(|| text.strip_suffix('z'))?;
    let (date, time) = text.split_once(['T', 't'])?;
    let number = |s: &str, len: usize| (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<i64>().ok()).flatten();
    let mut date_parts = date.split('-');
    let (year, month, day) = (number(date_parts.next()?, 4)?, number(date_parts.next()?, 2)?, number(date_parts.next()?, 2)?);
    let (clock, fraction) = time.split_once('.').map_or((time, None), |(c, f)| (c, Some(f)));
    let mut clock_parts = clock.split(':');
    let (hour, minute, second) = (number(clock_parts.next()?, 2)?, number(clock_parts.next()?, 2)?, number(clock_parts.next()?, 2)?);
    if date_parts.next().is_some() || clock_parts.next().is_some() {
        return None;
    }
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let millis = match fraction {
        None => 0,
        Some(f) if (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => format!("{f:0<3}")[..3].parse::<i64>().ok()?,
        Some(_) => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A proleptic Gregorian (year, month 1-12, day 1-31) to days since 1970-01-01 (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Day of the week of a day since 1970-01-01: 0 is Sunday (1970-01-01 was a Thursday).
pub fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_426_867_123), "2026-11-23T09:41:07.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(-62_167_219_200_000), "0000-01-01T00:00:00.000Z");
        // Past the four-digit years, `format!` writes them.
        assert_eq!(rfc3339(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(-62_167_219_200_001), "-001-12-31T23:59:59.999Z");
    }

    #[test]
    fn digit_by_digit_writes_what_format_writes() {
        let by_format = |millis: i64| {
            let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
            let (year, month, day) = super::civil_from_days(secs.div_euclid(86_400));
            let rem = secs.rem_euclid(86_400);
            format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
        };
        // Steps that are prime numbers of milliseconds, so every field takes many values.
        let mut millis = -62_167_219_200_000;
        while millis < 253_402_300_800_000 {
            assert_eq!(rfc3339(millis), by_format(millis), "{millis}");
            millis += 9_999_999_967;
        }
    }

    #[test]
    fn parsing_reads_back_what_rfc3339_writes() {
        use super::parse_rfc3339;
        for millis in [0, 951_782_400_000, 1_795_426_867_123, -1, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339(millis)), Some(millis));
        }
        assert_eq!(parse_rfc3339("2026-11-23T09:41:07Z"), Some(1_795_426_867_000));
        assert_eq!(parse_rfc3339("2026-11-23T09:41:07.1Z"), Some(1_795_426_867_100));
        assert_eq!(parse_rfc3339("2026-11-23T09:41:07.123456789Z"), Some(1_795_426_867_123));
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23T09:41:07",
            "2026-11-23T09:41:07+01:00",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T09:41:07.Z",
            "2026-11-23T09:41:07.1234567890Z",
            "26-11-23T09:41:07Z",
            "2026-11-23T09:41:07:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn days_round_trip() {
        for days in [-800_000, -1, 0, 1, 11_016, 20_780, 2_000_000] {
            let (y, m, d) = super::civil_from_days(days);
            assert_eq!(super::days_from_civil(y, m, d), days);
        }
        assert_eq!(super::days_from_civil(2026, 11, 23), 20_780);
        assert_eq!(super::weekday(20_780), 1, "2026-11-23 is a Monday");
    }
}
