//! One cluster: a kube-apiserver (and optionally a kube-controller-manager)
//! with its own CA, service-account key, etcd prefix and service CIDR.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;
use crate::kubeconfig;
use crate::pki::{self, Ca};
use crate::ports::{free_port, lost_port_race};
use crate::process::Process;

/// The service-account token issuer every test-bed cluster uses.
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// One running Kubernetes control plane of a [`Testbed`](crate::Testbed).
///
/// Its directory holds the PKI, the admin kubeconfig and the components'
/// logs (`kube-apiserver.log`, `kube-controller-manager.log`).
#[derive(Debug)]
pub struct Cluster {
    name: String,
    index: usize,
    dir: PathBuf,
    port: u16,
    kubeconfig: PathBuf,
    ca: Ca,
    user_configs: AtomicUsize,
    // Fields drop in declaration order: the controller manager goes before
    // the API server it talks to.
    controller_manager: Option<Process>,
    apiserver: std::sync::Mutex<Process>,
    // What it takes to start the API server again (restart tests).
    apiserver_bin: PathBuf,
    apiserver_args: Vec<OsString>,
    apiserver_log: PathBuf,
}

/// What [`Cluster::start`] needs to know.
pub(crate) struct ClusterSpec<'a> {
    pub(crate) name: String,
    pub(crate) index: usize,
    pub(crate) dir: PathBuf,
    pub(crate) bin_dir: &'a Path,
    pub(crate) etcd_url: String,
    pub(crate) controller_manager: bool,
    pub(crate) deadline: Instant,
}

impl Cluster {
    pub(crate) async fn start(spec: ClusterSpec<'_>) -> Result<Cluster, Error> {
        let ClusterSpec {
            name,
            index,
            dir,
            bin_dir,
            etcd_url,
            controller_manager,
            deadline,
        } = spec;
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let files = Files::new(&dir);

        // PKI: the CA signs the serving certificate, every client
        // certificate, and (through the controller manager) CSRs.
        let ca = Ca::new(&format!("atoll-testbed-ca-{name}"))?;
        let service_ip = service_ip(index)?;
        let serving = ca.issue_server(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(service_ip)],
        )?;
        let admin = ca.issue_client("atoll-testbed-admin", &["system:masters"])?;
        let kcm = ca.issue_client("system:kube-controller-manager", &[])?;
        let (sa_key, sa_pub) = pki::service_account_key()?;
        kubeconfig::write_private(&files.ca_cert, ca.cert_pem().as_bytes())?;
        kubeconfig::write_private(&files.ca_key, ca.key_pem().as_bytes())?;
        kubeconfig::write_private(&files.serving_cert, serving.cert_pem.as_bytes())?;
        kubeconfig::write_private(&files.serving_key, serving.key_pem.as_bytes())?;
        kubeconfig::write_private(&files.sa_key, sa_key.as_bytes())?;
        kubeconfig::write_private(&files.sa_pub, sa_pub.as_bytes())?;

        let apiserver_bin = crate::require_executable(bin_dir, "kube-apiserver")?;
        let kcm_bin = if controller_manager {
            Some(crate::require_executable(
                bin_dir,
                "kube-controller-manager",
            )?)
        } else {
            None
        };

        // The API server, retried with a new port if another process took
        // the one we picked before the server bound it.
        let mut attempt = 0;
        let (port, (apiserver, apiserver_args)) = loop {
            attempt += 1;
            let port = free_port()?;
            let server = format!("https://127.0.0.1:{port}");
            kubeconfig::write(
                &files.kubeconfig,
                &name,
                "atoll-testbed-admin",
                &server,
                &ca.cert_pem(),
                &admin.cert_pem,
                &admin.key_pem,
            )?;
            let args = apiserver_args(&files, &name, index, port, &etcd_url);
            let mut apiserver = Process::spawn(
                format!("kube-apiserver ({name})"),
                &apiserver_bin,
                &args,
                &files.apiserver_log,
            )?;
            match wait_ready(&mut apiserver, &files.kubeconfig, deadline).await {
                Ok(()) => break (port, (apiserver, args)),
                Err(_) if attempt < 4 && lost_port_race(&apiserver.log_tail(30)) => {
                    tracing::debug!(cluster = %name, port, "API server lost a port race; retrying");
                }
                Err(reason) => return Err(apiserver.startup_error(reason)),
            }
        };
        tracing::debug!(cluster = %name, port, "API server ready");

        let controller_manager = match kcm_bin {
            None => None,
            Some(kcm_bin) => {
                kubeconfig::write(
                    &files.kcm_kubeconfig,
                    &name,
                    "system:kube-controller-manager",
                    &format!("https://127.0.0.1:{port}"),
                    &ca.cert_pem(),
                    &kcm.cert_pem,
                    &kcm.key_pem,
                )?;
                let args = controller_manager_args(&files, &name);
                let mut process = Process::spawn(
                    format!("kube-controller-manager ({name})"),
                    &kcm_bin,
                    &args,
                    &files.kcm_log,
                )?;
                if let Err(reason) =
                    wait_default_service_account(&mut process, &files.kubeconfig, deadline).await
                {
                    return Err(process.startup_error(reason));
                }
                tracing::debug!(cluster = %name, "controller manager ready");
                Some(process)
            }
        };

        Ok(Cluster {
            name,
            index,
            dir,
            port,
            kubeconfig: files.kubeconfig,
            ca,
            user_configs: AtomicUsize::new(0),
            controller_manager,
            apiserver: std::sync::Mutex::new(apiserver),
            apiserver_bin,
            apiserver_args,
            apiserver_log: files.apiserver_log,
        })
    }

    /// The cluster's name (`cluster-0`, `cluster-1`, …), also its etcd
    /// prefix's last segment and its kubeconfig's cluster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's position in [`Testbed::clusters`](crate::Testbed::clusters).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The API server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory: PKI, kubeconfigs, logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The etcd key prefix this cluster's API server stores under.
    pub fn etcd_prefix(&self) -> String {
        etcd_prefix(&self.name)
    }

    /// The service CIDR (`10.96.0.0/16` for the first cluster, `10.97.0.0/16`
    /// for the second, …).
    pub fn service_cidr(&self) -> String {
        service_cidr(self.index)
    }

    /// The cluster CA's certificate, PEM.
    pub fn ca_cert_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// The admin kubeconfig: a client certificate in `system:masters`, the
    /// server as `https://127.0.0.1:<port>`, the CA embedded.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's log file.
    pub fn apiserver_log(&self) -> &Path {
        &self.apiserver_log
    }

    /// The controller manager's log file, if one runs.
    pub fn controller_manager_log(&self) -> Option<&Path> {
        self.controller_manager.as_ref().map(Process::log)
    }

    /// The process ids of this cluster's components.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.apiserver_process(|p| p.pid())];
        pids.extend(self.controller_manager.as_ref().map(Process::pid));
        pids
    }

    fn apiserver_process<T>(&self, f: impl FnOnce(&mut Process) -> T) -> T {
        // A poisoned lock only means a panic elsewhere while swapping processes; the process
        // inside is still the current one.
        let mut guard = self
            .apiserver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Kills the API server (SIGKILL), as a crash would. Its state stays in etcd.
    pub fn kill_apiserver(&self) {
        self.apiserver_process(Process::kill);
    }

    /// Starts the API server again (after [`Cluster::kill_apiserver`], or killing it first),
    /// on the same port with the same state, and waits until it is ready.
    pub async fn restart_apiserver(&self) -> Result<(), Error> {
        self.kill_apiserver();
        let mut fresh = Process::spawn(
            format!("kube-apiserver ({})", self.name),
            &self.apiserver_bin,
            &self.apiserver_args,
            &self.apiserver_log,
        )?;
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        if let Err(reason) = wait_ready(&mut fresh, &self.kubeconfig, deadline).await {
            return Err(fresh.startup_error(reason));
        }
        self.apiserver_process(|current| std::mem::swap(current, &mut fresh));
        Ok(())
    }

    /// A client with the admin identity.
    ///
    /// Each call builds a new client, bound to the calling tokio runtime.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client_from(&self.kubeconfig).await
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`; add arguments and run it.
    pub fn kubectl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(crate::kubectl_bin());
        command.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        command
    }

    /// Writes a kubeconfig for an arbitrary identity — a client certificate
    /// signed by the cluster CA with CN=`user` and O=`groups` — so tests can
    /// check what RBAC lets that identity do. At most two groups (a limit
    /// of the certificate library); the API server adds
    /// `system:authenticated` itself.
    pub fn kubeconfig_for_user(&self, user: &str, groups: &[&str]) -> Result<PathBuf, Error> {
        let cert = self.ca.issue_client(user, groups)?;
        let users = self.dir.join("users");
        std::fs::create_dir_all(&users)
            .map_err(Error::io(format!("creating {}", users.display())))?;
        let safe: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let n = self.user_configs.fetch_add(1, Ordering::Relaxed);
        let path = users.join(format!("{safe}-{n}.kubeconfig"));
        kubeconfig::write(
            &path,
            &self.name,
            user,
            &self.url(),
            &self.ca.cert_pem(),
            &cert.cert_pem,
            &cert.key_pem,
        )?;
        Ok(path)
    }

    /// A client for an arbitrary identity; see [`Cluster::kubeconfig_for_user`].
    pub async fn client_for_user(
        &self,
        user: &str,
        groups: &[&str],
    ) -> Result<kube::Client, Error> {
        client_from(&self.kubeconfig_for_user(user, groups)?).await
    }
}

/// A client from a kubeconfig file.
pub(crate) async fn client_from(path: &Path) -> Result<kube::Client, Error> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(Error::client(format!(
        "reading kubeconfig {}",
        path.display()
    )))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(Error::client(format!(
            "loading kubeconfig {}",
            path.display()
        )))?;
    kube::Client::try_from(config).map_err(Error::client(format!(
        "building a client from {}",
        path.display()
    )))
}

/// The cluster's file layout.
struct Files {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    kubeconfig: PathBuf,
    kcm_kubeconfig: PathBuf,
    apiserver_log: PathBuf,
    kcm_log: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Files {
        Files {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            kubeconfig: dir.join("admin.kubeconfig"),
            kcm_kubeconfig: dir.join("kube-controller-manager.kubeconfig"),
            apiserver_log: dir.join("kube-apiserver.log"),
            kcm_log: dir.join("kube-controller-manager.log"),
        }
    }
}

fn etcd_prefix(name: &str) -> String {
    format!("/atoll-testbed/{name}")
}

/// Clusters get 10.96.0.0/16, 10.97.0.0/16, …; staying below 10.200 keeps
/// clear of the node simulator's pod addresses (10.244.0.0/16).
pub(crate) const MAX_CLUSTERS: usize = 100;

fn service_cidr(index: usize) -> String {
    format!("10.{}.0.0/16", 96 + index)
}

fn service_ip(index: usize) -> Result<Ipv4Addr, Error> {
    let octet = u8::try_from(96 + index)
        .ok()
        .filter(|_| index < MAX_CLUSTERS)
        .ok_or_else(|| Error::Config(format!("at most {MAX_CLUSTERS} clusters")))?;
    Ok(Ipv4Addr::new(10, octet, 0, 1))
}

fn path_arg(flag: &str, path: &Path) -> OsString {
    let mut arg = OsString::from(format!("--{flag}="));
    arg.push(path);
    arg
}

fn apiserver_args(
    files: &Files,
    name: &str,
    index: usize,
    port: u16,
    etcd_url: &str,
) -> Vec<OsString> {
    // Written for 1.20. `--insecure-port` is left out: 1.20 no longer serves
    // insecurely and only warns that the flag has no effect.
    let mut args: Vec<OsString> = [
        format!("--etcd-servers={etcd_url}"),
        format!("--etcd-prefix={}", etcd_prefix(name)),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={port}"),
        "--authorization-mode=Node,RBAC".to_owned(),
        format!("--service-cluster-ip-range={}", service_cidr(index)),
        format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
        "--allow-privileged=true".to_owned(),
        "--enable-priority-and-fairness=false".to_owned(),
        "--profiling=false".to_owned(),
        // The `kubernetes` Service would get 127.0.0.1 as its endpoint, which
        // Endpoints validation rejects (loopback), logging an error every
        // few seconds; so that Service has no endpoints.
        "--endpoint-reconciler-type=none".to_owned(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.extend([
        path_arg("tls-cert-file", &files.serving_cert),
        path_arg("tls-private-key-file", &files.serving_key),
        path_arg("client-ca-file", &files.ca_cert),
        path_arg("service-account-key-file", &files.sa_pub),
        path_arg("service-account-signing-key-file", &files.sa_key),
    ]);
    // Only the certificate files are used; this keeps the server from
    // writing anywhere else should it want to.
    if let Some(dir) = files.kubeconfig.parent() {
        args.push(path_arg("cert-dir", dir));
    }
    args
}

fn controller_manager_args(files: &Files, name: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        // 1.20 still serves insecurely on 10252 by default; 0 turns it off.
        "--port=0".to_owned(),
        "--secure-port=0".to_owned(),
        "--leader-elect=false".to_owned(),
        "--use-service-account-credentials=true".to_owned(),
        "--controllers=*,bootstrapsigner,tokencleaner".to_owned(),
        format!("--cluster-name={name}"),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.extend([
        path_arg("kubeconfig", &files.kcm_kubeconfig),
        path_arg("service-account-private-key-file", &files.sa_key),
        path_arg("root-ca-file", &files.ca_cert),
        path_arg("cluster-signing-cert-file", &files.ca_cert),
        path_arg("cluster-signing-key-file", &files.ca_key),
    ]);
    args
}

/// Polls `/readyz` with the admin identity until it answers `ok` and the
/// `default` namespace exists.
async fn wait_ready(
    process: &mut Process,
    kubeconfig: &Path,
    deadline: Instant,
) -> Result<(), String> {
    let client = client_from(kubeconfig).await.map_err(|e| e.to_string())?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    loop {
        if let Some(status) = process.exited() {
            return Err(format!("exited with {status}"));
        }
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let last = match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
            .await
        {
            // The bootstrap controller creates `default` soon after
            // readiness; tests expect it, so wait for it too.
            Ok(Ok(body)) if body.trim() == "ok" => match namespaces.get_opt("default").await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => "namespace default does not exist yet".to_owned(),
                Err(e) => format!("getting namespace default: {e}"),
            },
            Ok(Ok(body)) => format!("/readyz answered {body:?}"),
            Ok(Err(e)) => format!("/readyz: {e}"),
            Err(_) => "/readyz timed out".to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(format!("not ready in time (last: {last})"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for the `default` service account in `default` and its token
/// secret: the controller manager's service-account and token controllers
/// both work, and pods can be admitted.
async fn wait_default_service_account(
    process: &mut Process,
    kubeconfig: &Path,
    deadline: Instant,
) -> Result<(), String> {
    let client = client_from(kubeconfig).await.map_err(|e| e.to_string())?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
    loop {
        if let Some(status) = process.exited() {
            return Err(format!("exited with {status}"));
        }
        let last = match accounts.get_opt("default").await {
            Ok(Some(sa)) if sa.secrets.as_ref().is_some_and(|s| !s.is_empty()) => return Ok(()),
            Ok(Some(_)) => "service account default/default has no token yet".to_owned(),
            Ok(None) => "service account default/default does not exist yet".to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "the default service account was not ready in time (last: {last})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
