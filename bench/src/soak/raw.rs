//! Requests an HTTP client library will not send: a body bigger than the limit announced
//! but never sent, and bytes that are not HTTP. Raw TCP, so the check is on the status line
//! the server answers with.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `host:port` of a base URL `http://host:port[/...]`.
pub fn authority(base_url: &str) -> Option<&str> {
    let rest = base_url.strip_prefix("http://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Sends `bytes`, then reads the status code of the answer: `Ok(0)` when the server closed
/// the connection without one.
pub async fn status_of(addr: &str, bytes: &[u8], timeout: Duration) -> std::io::Result<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(bytes).await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        // Only the status line matters; stop reading once it is in.
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                // A reset after part of the answer arrived still leaves that answer; a reset
                // before any is a close without one.
                Err(_) if !answer.is_empty() => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        Ok(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    Ok(parse_status(&answer).unwrap_or(0))
}

/// The code of an `HTTP/1.x NNN ...` status line.
pub fn parse_status(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// Headers announcing a JSON body of `length` bytes; the body never follows.
pub fn oversized_headers(addr: &str, length: u64) -> Vec<u8> {
    format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
    .into_bytes()
}

/// Not a request line, with control bytes in it.
pub const NOT_HTTP: &[u8] = b"\x16\x03\x01 GARBAGE \x00\xff\r\nnot: http\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_and_authorities() {
        assert_eq!(
            parse_status(b"HTTP/1.1 413 Payload Too Large\r\n"),
            Some(413)
        );
        assert_eq!(parse_status(b"HTTP/1.1 400 Bad Request\r\nx"), Some(400));
        assert_eq!(parse_status(b"garbage"), None);
        assert_eq!(parse_status(b""), None);
        assert_eq!(authority("http://127.0.0.1:8000"), Some("127.0.0.1:8000"));
        assert_eq!(authority("http://h:1/x"), Some("h:1"));
        assert_eq!(authority("https://h"), None);
    }

    #[tokio::test]
    async fn reads_the_status_a_server_answers_with() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let status = status_of(
            &addr,
            &oversized_headers(&addr, 1 << 30),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(status, 413);
    }
}
