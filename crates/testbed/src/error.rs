use std::path::PathBuf;

/// Everything that can go wrong starting or using a test bed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kubernetes binary is not where the test bed looks for it.
    #[error(
        "test-bed binary `{binary}` not found in {dir}; run `hack/testbed.sh` to build and \
         cache the Kubernetes binaries, or point ATOLL_TESTBED_BIN at a directory holding them"
    )]
    MissingBinary {
        /// The binary's file name.
        binary: String,
        /// Where it was looked for.
        dir: PathBuf,
    },

    /// The configuration asks for something the test bed cannot do.
    #[error("invalid test-bed configuration: {0}")]
    Config(String),

    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Generating keys or certificates failed.
    #[error("generating test-bed PKI")]
    Pki(#[from] rcgen::Error),

    /// A component did not start or did not become ready.
    #[error("{component} failed to start: {reason}\n--- last lines of {} ---\n{tail}", log.display())]
    Startup {
        /// Which process, e.g. `kube-apiserver (cluster-0)`.
        component: String,
        /// Why startup was given up.
        reason: String,
        /// The component's log file.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },

    /// Talking to a cluster (or reading its kubeconfig) failed.
    #[error("{context}")]
    Client {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn client<E>(context: impl Into<String>) -> impl FnOnce(E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let context = context.into();
        move |source| Error::Client {
            context,
            source: Box::new(source),
        }
    }
}
