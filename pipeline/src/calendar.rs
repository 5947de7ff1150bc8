//! Proleptic Gregorian calendar arithmetic: days since 1970-01-01 ↔
//! (year, month, day). Pure integer math, no clock, no I/O.
//!
//! Howard Hinnant's `days_from_civil` / `civil_from_days`
//! (<https://howardhinnant.github.io/date_algorithms.html>): shift the
//! year to start on March 1st, so that the leap day is the last day of a
//! year, and count in eras of 400 years (146 097 days), the period of the
//! Gregorian calendar. Years are astronomical: year 0 is 1 BC, -1 is 2 BC
//! (PostgreSQL prints year `y <= 0` as `1 - y` BC).
//!
//! Why hand-written rather than `jiff` or `time`: Ferry needs the whole
//! range of PostgreSQL's `timestamp`/`timestamptz` (4714 BC to 294276 AD)
//! and, for MongoDB, any millisecond an i64 can name (±292 million years,
//! refused later if PostgreSQL cannot hold it). jiff 1.0's civil dates stop
//! at years -9999..=9999, and time 0.3 at ±9999 (±999 999 with its
//! `large-dates` feature, and its current release needs Rust 1.88, above
//! Ferry's 1.85). These two functions are exact over the whole range below
//! and add no dependency to the 2-core debug build. Measured once against
//! jiff 1.0.3 (a throwaway program, not kept): the two agree on every day
//! jiff can name, and jiff's conversion is faster by a few nanoseconds,
//! which is noise next to formatting the timestamp text around it; it
//! returns nothing for 9999-12-31 and later, which Ferry must write.
//!
//! Domain: [`civil_from_days`] is exact for every `days` up to
//! `i64::MAX - 719_468` (every day of an i64 of milliseconds, or of
//! microseconds, is far inside); [`days_from_civil`] for every year whose
//! day count fits an i64 (|year| below 2.5 × 10¹⁶).

/// Days from 0000-03-01 (the start of era 0) to 1970-01-01.
const UNIX_EPOCH_FROM_ERA_START: i64 = 719_468;
/// Days in an era: 400 Gregorian years.
const DAYS_PER_ERA: i64 = 146_097;

/// (year, month, day) of the date `days` days after 1970-01-01; month in
/// 1..=12, day in 1..=31, year astronomical (0 is 1 BC).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + UNIX_EPOCH_FROM_ERA_START;
    let era = z.div_euclid(DAYS_PER_ERA);
    let doe = z.rem_euclid(DAYS_PER_ERA); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in small ranges (see above), so the casts cannot truncate.
    (year, month as u32, day as u32)
}

/// Days since 1970-01-01 of the date (`year` astronomical, 0 is 1 BC);
/// the inverse of [`civil_from_days`] for valid dates. Month and day are
/// not checked: the caller passes a real date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = (month + 9) % 12; // [0, 11], March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * DAYS_PER_ERA + doe - UNIX_EPOCH_FROM_ERA_START
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // Year 0 (1 BC) is a leap year; 1900 is not, 2000 is.
        assert_eq!(days_from_civil(0, 3, 1) - days_from_civil(0, 2, 28), 2);
        assert_eq!(
            days_from_civil(1900, 3, 1) - days_from_civil(1900, 2, 28),
            1
        );
        assert_eq!(civil_from_days(days_from_civil(0, 2, 29)), (0, 2, 29));
        // PostgreSQL's range: Julian day 0 (4714-11-24 BC) and the day
        // after its last timestamp (294277-01-01).
        assert_eq!(days_from_civil(-4713, 11, 24), -2_440_588);
        assert_eq!(civil_from_days(-2_440_588), (-4713, 11, 24));
        assert_eq!(days_from_civil(294_277, 1, 1), 106_762_940);
        assert_eq!(civil_from_days(106_762_939), (294_276, 12, 31));
    }

    #[test]
    fn round_trips_at_the_extremes() {
        let ms_per_day = 86_400_000;
        let us_per_day = 86_400_000_000;
        for days in [
            i64::MIN.div_euclid(ms_per_day),
            i64::MAX.div_euclid(ms_per_day),
            i64::MIN.div_euclid(us_per_day),
            i64::MAX.div_euclid(us_per_day),
            -719_468,
            -719_469,
            0,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    /// The number of days in `month` of `year`, from the Gregorian rule
    /// itself (an oracle independent of the era arithmetic above).
    fn month_length(year: i64, month: u32) -> u32 {
        let leap =
            year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0);
        match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    proptest! {
        /// Any day, well beyond what an i64 of milliseconds can name,
        /// goes to a valid date and back to itself.
        #[test]
        fn days_to_civil_and_back(days in -(1i64 << 50)..(1i64 << 50)) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m));
            prop_assert!(d >= 1 && d <= month_length(y, m), "{y}-{m}-{d}");
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        /// Any valid date over ±10⁹ years goes to a day count and back.
        #[test]
        fn civil_to_days_and_back(
            y in -1_000_000_000i64..1_000_000_000,
            m in 1u32..=12,
            d in 1u32..=31,
        ) {
            let d = d.min(month_length(y, m));
            let days = days_from_civil(y, m, d);
            prop_assert_eq!(civil_from_days(days), (y, m, d));
            // The next day is one more, across month, year and era ends.
            let next = civil_from_days(days + 1);
            prop_assert_eq!(days_from_civil(next.0, next.1, next.2), days + 1);
        }
    }
}
