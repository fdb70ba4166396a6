//! Per-request deadlines: llm-d's `x-llm-d-slo-ttft-ms` / `x-llm-d-slo-tpot-ms` headers and the
//! body fields `slo_ttft_ms` / `slo_tpot_ms` (flat extensions beside `priority`, vLLM-style).
//! Both are whole milliseconds in `[1, MAX_SLO_MS]`; anything else is a 400. The body field
//! wins over the header when both are present (the client is more specific than a gateway).
//! Unset parts fall back to the server's SLO (`--tbt-slo`, `--ttft-slack`, `--slo-file`).

use crate::error::ApiError;
use axum::http::HeaderMap;
use metrum_core::Nanos;
use metrum_scheduler::RequestSlo;

pub const TTFT_HEADER: &str = "x-llm-d-slo-ttft-ms";
pub const TPOT_HEADER: &str = "x-llm-d-slo-tpot-ms";

/// One hour: a longer target is a client error, not a deadline.
pub const MAX_SLO_MS: u64 = 3_600_000;

/// The SLO headers of one HTTP request, unparsed (the request-id middleware records them;
/// they are checked with the body fields, so an invalid one is a 400 of the generation route).
#[derive(Clone, Debug, Default)]
pub struct SloHeaders {
    pub ttft: Option<String>,
    pub tpot: Option<String>,
}

impl SloHeaders {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let read = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
        };
        SloHeaders {
            ttft: read(TTFT_HEADER),
            tpot: read(TPOT_HEADER),
        }
    }
}

/// Checks a body field's value (`slo_ttft_ms`, `slo_tpot_ms`).
pub fn check_field(name: &str, value: Option<u64>) -> Result<Option<u64>, ApiError> {
    match value {
        Some(ms) if ms == 0 || ms > MAX_SLO_MS => Err(ApiError::param(
            name,
            format!("must be whole milliseconds in [1, {MAX_SLO_MS}], got {ms}"),
        )),
        v => Ok(v),
    }
}

fn parse_header(name: &str, value: &str) -> Result<u64, ApiError> {
    match value.trim().parse::<u64>() {
        Ok(ms) if (1..=MAX_SLO_MS).contains(&ms) => Ok(ms),
        _ => Err(ApiError::bad_request(format!(
            "header {name} must be whole milliseconds in [1, {MAX_SLO_MS}], got '{value}'"
        ))),
    }
}

/// The request's own SLO: body fields (already checked) over headers.
pub fn request_slo(
    headers: &SloHeaders,
    ttft_field: Option<u64>,
    tpot_field: Option<u64>,
) -> Result<RequestSlo, ApiError> {
    let pick = |field: Option<u64>, header: &Option<String>, name: &str| {
        let header = header
            .as_deref()
            .map(|h| parse_header(name, h))
            .transpose()?;
        Ok::<_, ApiError>(field.or(header).map(Nanos::from_millis))
    };
    Ok(RequestSlo {
        ttft: pick(ttft_field, &headers.ttft, TTFT_HEADER)?,
        tpot: pick(tpot_field, &headers.tpot, TPOT_HEADER)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ttft: Option<&str>, tpot: Option<&str>) -> SloHeaders {
        SloHeaders {
            ttft: ttft.map(str::to_string),
            tpot: tpot.map(str::to_string),
        }
    }

    #[test]
    fn headers_set_the_slo_and_body_fields_win() {
        let slo = request_slo(&headers(Some("250"), Some(" 40 ")), None, None).unwrap();
        assert_eq!(slo.ttft, Some(Nanos::from_millis(250)));
        assert_eq!(slo.tpot, Some(Nanos::from_millis(40)));
        let slo = request_slo(&headers(Some("250"), None), Some(900), None).unwrap();
        assert_eq!(slo.ttft, Some(Nanos::from_millis(900)));
        assert_eq!(slo.tpot, None);
        assert_eq!(
            request_slo(&SloHeaders::default(), None, None).unwrap(),
            RequestSlo::SERVER
        );
    }

    #[test]
    fn bad_values_are_client_errors() {
        for bad in ["0", "-5", "1.5", "abc", "", "3600001"] {
            let err = request_slo(&headers(Some(bad), None), None, None).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{bad}");
            assert!(err.to_string().contains(TTFT_HEADER), "{err}");
        }
        assert!(check_field("slo_tpot_ms", Some(0)).is_err());
        assert_eq!(check_field("slo_tpot_ms", Some(30)).unwrap(), Some(30));
    }
}
