//! Durations in config values: `"30d"`, `"12h"`, `"90s"`, `"1d 12h"`, `"P30D"`.

use std::time::Duration;

/// Parse a human or ISO 8601 duration into a [`Duration`], counting a day as 24 hours.
///
/// Accepts jiff's friendly format (`"30d"`, `"1d 12h"`, `"90s"`, `"2 hours"`) and ISO 8601 (`"P30D"`,
/// `"PT12H"`). Months and years are rejected (their length varies); negative and zero durations are
/// rejected too. The error is a message for the user, without location.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let hint = "use e.g. \"30d\", \"12h\", \"90s\", \"1d 12h\" or \"P30D\"";
    let span: jiff::Span = text
        .trim()
        .parse()
        .map_err(|e| format!("invalid duration \"{text}\": {e}; {hint}"))?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| {
            format!("invalid duration \"{text}\": months and years have no fixed length; {hint}")
        })?;
    if signed.is_negative() || signed.is_zero() {
        return Err(format!(
            "invalid duration \"{text}\": must be greater than zero; {hint}"
        ));
    }
    Duration::try_from(signed).map_err(|e| format!("invalid duration \"{text}\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_day_hour_and_iso_forms() {
        let cases = [
            ("30d", 30 * 86400),
            ("12h", 12 * 3600),
            ("90s", 90),
            ("1d 12h", 36 * 3600),
            ("P30D", 30 * 86400),
            ("PT2M", 120),
            ("2 hours", 7200),
            ("1w", 7 * 86400),
        ];
        for (text, secs) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_garbage_zero_negative_and_months() {
        for text in ["", "abc", "30x", "0s", "-5m", "1mo", "P1Y"] {
            let err = parse_duration(text).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid duration \"{text}\"")),
                "{text}: {err}"
            );
        }
        assert!(
            parse_duration("1mo")
                .unwrap_err()
                .contains("months and years")
        );
    }
}
