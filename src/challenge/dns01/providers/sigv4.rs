//! AWS Signature Version 4 request signing, on openssl HMAC-SHA256.

use openssl::hash::{MessageDigest, hash};
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&openssl::sha::sha256(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC-SHA256 with an in-memory key cannot fail short of allocation failure.
    let pkey = PKey::hmac(key).expect("HMAC key");
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey).expect("HMAC signer");
    signer.update(data).expect("HMAC update");
    signer.sign_to_vec().expect("HMAC sign")
}

/// One request to sign.
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// URI path, already URI-encoded ("/" when empty).
    pub path: &'a str,
    /// Canonical query string (sorted, encoded) or "".
    pub query: &'a str,
    /// Headers to sign, (name, value); `host` and `x-amz-date` must be among them.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body.
    pub payload: &'a [u8],
}

/// The result: the `Authorization` header value plus the pieces, for tests.
pub struct Signed {
    /// `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
    pub authorization: String,
    /// The canonical request that was signed.
    pub canonical_request: String,
    /// The hex signature.
    pub signature: String,
}

/// Sign `req` for `region`/`service` at `amz_date` (`YYYYMMDDTHHMMSSZ`).
pub fn sign(
    req: &Request<'_>,
    access_key: &str,
    secret_key: &str,
    region: &str,
    service: &str,
    amz_date: &str,
) -> Signed {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        if req.path.is_empty() { "/" } else { req.path },
        req.query,
        canonical_headers,
        signed_headers,
        sha256_hex(req.payload)
    );
    let date = &amz_date[..8.min(amz_date.len())];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&hash(MessageDigest::sha256(), canonical_request.as_bytes())
            .map(|d| d.to_vec())
            .unwrap_or_default())
    );
    let k_date = hmac(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    Signed {
        authorization: format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        ),
        canonical_request,
        signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's published SigV4 example (IAM ListUsers, "Create a signed AWS API request",
    // https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html and the
    // sigv4 test suite "get-vanilla" style): secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY.
    #[test]
    fn aws_published_example() {
        let headers = [
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("Host", "iam.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        let s = sign(
            &Request {
                method: "GET",
                path: "/",
                query: "Action=ListUsers&Version=2010-05-08",
                headers: &headers,
                payload: b"",
            },
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "iam",
            "20150830T123600Z",
        );
        assert_eq!(
            sha256_hex(s.canonical_request.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        assert_eq!(
            s.signature,
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }
}
