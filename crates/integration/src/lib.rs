//! Integration tests live in `tests/`; this library holds what every suite shares and
//! depends on no Atoll crate.

use std::time::Duration;

/// Polls `check` every 200 ms until it returns `Some`, or fails after `within` saying what was
/// awaited and the last error seen. Errors are retried, not returned: a test waits through a
/// member's or hub's restart, and its API answering errors meanwhile, as through any other
/// state not reached yet.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => String::from("not yet"),
            Err(error) => format!("{error:#}"),
        };
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_through_errors_and_reports_the_last_one() -> anyhow::Result<()> {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), "the third call", async || {
            calls += 1;
            match calls {
                1 => anyhow::bail!("not up yet"),
                2 => Ok(None),
                _ => Ok(Some(calls)),
            }
        })
        .await?;
        assert_eq!(value, 3);

        let error = match eventually(Duration::from_millis(300), "never", async || {
            anyhow::bail!("refused")
        })
        .await
        {
            Ok(()) => anyhow::bail!("a check that always fails cannot succeed"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("waiting for never: refused"), "{error}");
        Ok(())
    }
}
