//! What the `atoll` command prints besides its results: logs (stderr, coloured only on a
//! terminal and never under `NO_COLOR`), errors worded as kubectl words them, and kubectl's
//! "No resources found". Every subcommand reports through here.

use std::io::IsTerminal;

/// Whether stderr may carry ANSI colour: it is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
pub fn colour_allowed() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Logs to stderr. Long-running commands (hub, controller, agent, dns) log at INFO; one-shot
/// commands only warn, unless `-v` (INFO) or `-vv` (DEBUG). `RUST_LOG` overrides both.
pub fn init_logging(verbose: u8, long_running: bool) {
    let default = match (verbose, long_running) {
        (0, false) => "warn",
        (0 | 1, _) => "info",
        _ => "debug",
    };
    // hickory-server logs every DNS query at info; kube's client logs at error every request
    // that fails, which a one-shot command reports itself.
    let default = if long_running || verbose > 0 {
        format!("{default},hickory_server=warn")
    } else {
        format!("{default},hickory_server=warn,kube_client::client::builder=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_allowed())
        .with_writer(std::io::stderr)
        .init();
}

/// kubectl's line for an empty list, on stderr: "No resources found in NS namespace." for one
/// namespace, "No resources found" otherwise.
pub fn no_resources(namespace: Option<&str>) {
    match namespace {
        Some(ns) => eprintln!("No resources found in {ns} namespace."),
        None => eprintln!("No resources found"),
    }
}

/// An error as kubectl would print it: `Error from server (NotFound): …` for API errors,
/// "The connection to the server HOST was refused …" when the server is down, else
/// `error: …` with the causes.
pub fn error_message(error: &anyhow::Error) -> String {
    for (depth, cause) in error.chain().enumerate() {
        let status = match cause.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => Some(&**status),
            _ => cause.downcast_ref::<kube::core::Status>(),
        };
        if let Some(status) = status {
            let mut text = api_error(&status.reason, &status.message, status.code);
            // What Atoll was doing, on a line of its own after kubectl's.
            let doing: Vec<String> = error.chain().take(depth).map(|c| c.to_string()).collect();
            if !doing.is_empty() {
                text.push_str(&format!("\nwhile {}", doing.join(": ")));
            }
            return text;
        }
    }
    let server = crate::connect::server().unwrap_or("(unknown)");
    let refused = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            || cause.to_string().contains("Connection refused")
    });
    if refused {
        return format!(
            "The connection to the server {server} was refused - did you specify the right host or port?"
        );
    }
    let unreachable = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<kube::Error>(),
            Some(kube::Error::HyperError(_) | kube::Error::Service(_))
        )
    });
    if unreachable {
        let root = error
            .chain()
            .last()
            .map(ToString::to_string)
            .unwrap_or_default();
        return format!("Unable to connect to the server {server}: {root}");
    }
    format!("error: {error:#}")
}

/// kubectl's `StandardErrorMessage` for a Status.
fn api_error(reason: &str, message: &str, code: u16) -> String {
    let message = if message.is_empty() {
        format!("the server responded with the status code {code}")
    } else {
        message.to_owned()
    };
    match reason {
        "Unauthorized" => format!("error: You must be logged in to the server ({message})"),
        "" => format!("Error from server: {message}"),
        reason => format!("Error from server ({reason}): {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(reason: &str, message: &str, code: u16) -> anyhow::Error {
        let status = kube::core::Status {
            reason: reason.into(),
            message: message.into(),
            code,
            ..Default::default()
        };
        anyhow::Error::new(kube::Error::Api(Box::new(status))).context("listing on the hub")
    }

    #[test]
    fn api_errors_read_like_kubectl() {
        assert_eq!(
            error_message(&status("NotFound", "works \"x\" not found", 404)),
            "Error from server (NotFound): works \"x\" not found\nwhile listing on the hub"
        );
        assert!(error_message(&status("", "boom", 500)).starts_with("Error from server: boom\n"));
        assert!(
            error_message(&status("Unauthorized", "Unauthorized", 401))
                .starts_with("error: You must be logged in to the server (Unauthorized)\n")
        );
    }

    #[test]
    fn other_errors_read_like_kubectl() {
        let refused =
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                .context("listing");
        assert!(error_message(&refused).starts_with("The connection to the server "));
        let plain = anyhow::anyhow!("disk full").context("writing x");
        assert_eq!(error_message(&plain), "error: writing x: disk full");
    }
}
