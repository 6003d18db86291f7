//! Child processes that cannot outlive the test.
//!
//! Two mechanisms, because either alone leaves a gap:
//!
//! - [`Process`] kills and reaps its child on drop, which covers normal
//!   teardown and panicking tests (drop runs while unwinding).
//! - Every child is started as `setpriv --pdeathsig KILL -- <binary> …`:
//!   `setpriv` (util-linux) sets the kernel's parent-death signal and then
//!   execs the binary, which keeps it. If the test process dies without
//!   unwinding (SIGINT, SIGTERM, SIGKILL, `process::exit`), the kernel sends
//!   the child SIGKILL. The workspace forbids `unsafe`, which rules out calling
//!   `prctl(PR_SET_PDEATHSIG)` from a `pre_exec` hook ourselves; `setpriv`
//!   does the same from outside. Without `setpriv` (non-Linux, minimal
//!   images) children are spawned directly and only drop protects them.
//!
//! The kernel delivers the parent-death signal when the *thread* that forked
//! the child exits, not the process. Test harnesses run each test on its own
//! thread and tokio retires idle blocking threads, so children are forked
//! from one dedicated thread that lives as long as the process.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use crate::Error;

type SpawnRequest = (Command, mpsc::SyncSender<std::io::Result<Child>>);

/// A running child process, killed and reaped on drop.
#[derive(Debug)]
pub(crate) struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        name: impl Into<String>,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> Result<Process, Error> {
        let name = name.into();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(format!("opening log file {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("opening log file {}", log.display())))?;

        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);

        let child = spawn_on_reaper_thread(command).map_err(Error::io(format!(
            "starting {name} ({})",
            program.display()
        )))?;
        tracing::debug!(%name, pid = child.id(), log = %log.display(), "started");
        Ok(Process {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status, if the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// A startup error carrying the end of this process's log.
    pub(crate) fn startup_error(&self, reason: impl Into<String>) -> Error {
        Error::Startup {
            component: self.name.clone(),
            reason: reason.into(),
            log: self.log.clone(),
            tail: self.log_tail(40),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL: nothing a test bed's processes hold is worth a graceful
        // shutdown, and the directory they write to is deleted next.
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::debug!(name = %self.name, pid = self.child.id(), "stopped");
    }
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX {
        let _ = file.seek(SeekFrom::Start(len - MAX));
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `setpriv` if it exists and supports `--pdeathsig` (checked once).
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let candidate = ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .or_else(|| crate::find_on_path("setpriv"))?;
            let works = Command::new(&candidate)
                .args(["--pdeathsig", "KILL", "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !works {
                tracing::warn!(
                    "`setpriv --pdeathsig` unavailable: test-bed processes survive a killed test"
                );
            }
            works.then_some(candidate)
        })
        .as_deref()
}

/// Spawns `command` from the process-lifetime spawner thread (see the module
/// docs), or from the calling thread if that thread could not be started.
fn spawn_on_reaper_thread(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("atoll-testbed-spawner".into())
            .spawn(move || {
                // Runs until the process exits: the sender lives in a static.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(spawner) = spawner else {
        return command.spawn();
    };
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    if let Err(mpsc::SendError((command, _))) = spawner.send((command, reply_tx)) {
        let mut command = command;
        return command.spawn();
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the test-bed spawner thread is gone")))
}
