//! Image references as containerd and the kubelet read them, and where a
//! node fetches them from (`--registry-mirror`, `--insecure-registry`).
//!
//! `kubevirt/cirros-container-disk-demo` is `docker.io/kubevirt/…:latest`,
//! `busybox` is `docker.io/library/busybox:latest`; a first component with a
//! `.` or `:` or `localhost` is a registry host.

use std::collections::BTreeMap;
use std::fmt;

/// Docker Hub, the registry of unqualified names.
pub const DOCKER_HUB: &str = "docker.io";

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io`, `quay.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/busybox`, `kubevirt/cirros-container-disk-demo`.
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{image:?} is not an image reference: {why}")]
pub struct RefError {
    image: String,
    why: &'static str,
}

impl ImageRef {
    pub fn parse(image: &str) -> Result<ImageRef, RefError> {
        let bad = |why| RefError { image: image.to_string(), why };
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(bad("a digest is sha256: and 64 lowercase hex digits"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (image, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(bad("a tag is up to 128 letters, digits, '_', '.', '-'"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad("repository components are lowercase letters, digits and separators"));
        }
        let registry_ok = !registry.is_empty()
            && registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            && !registry.starts_with(['.', '-', ':']);
        if !registry_ok {
            return Err(bad("the registry is a host name with an optional port"));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// KubeVirt's default pull policy: `Always` for `:latest` (or no tag), else `IfNotPresent`.
    pub fn default_policy(&self) -> PullPolicy {
        if self.digest.is_none() && self.tag.as_deref() == Some("latest") {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        }
    }

    /// A file name for this reference (`/` → `%2F`, `%` → `%25`, `:` and `@` kept).
    pub fn file_name(&self) -> String {
        self.to_string().replace('%', "%25").replace('/', "%2F")
    }

    /// The reference a `file_name` was made from.
    pub fn from_file_name(name: &str) -> Option<ImageRef> {
        ImageRef::parse(&name.replace("%2F", "/").replace("%25", "%")).ok()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `imagePullPolicy`, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The field's value, or the default for `image`.
    pub fn of(field: Option<&str>, image: &ImageRef) -> Result<PullPolicy, String> {
        match field {
            None | Some("") => Ok(image.default_policy()),
            Some("Always") => Ok(PullPolicy::Always),
            Some("IfNotPresent") => Ok(PullPolicy::IfNotPresent),
            Some("Never") => Ok(PullPolicy::Never),
            Some(other) => {
                Err(format!("Unsupported value: {other:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""))
            }
        }
    }
}

/// Where the node fetches images from: containerd's mirror semantics (a
/// mirror per registry host) and registries reached without verified TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registry host (`docker.io`) → mirror endpoint.
    pub mirrors: BTreeMap<String, Endpoint>,
    /// `HOST[:PORT]` reached over plain HTTP or TLS without verification.
    pub insecure: Vec<String>,
}

/// A registry endpoint: `host[:port]` and whether it speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub plain_http: bool,
}

impl RegistryConfig {
    /// Parses `REGISTRY=URL` (`http://` or `https://`, no path).
    pub fn parse_mirror(flag: &str) -> Result<(String, Endpoint), String> {
        let (registry, url) = flag
            .split_once('=')
            .ok_or_else(|| format!("{flag:?}: expected REGISTRY=URL (docker.io=http://10.0.0.1:5000)"))?;
        let (plain_http, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (true, rest),
            (_, Some(rest)) => (false, rest),
            _ => return Err(format!("{url:?}: a mirror URL starts with http:// or https://")),
        };
        let host = rest.trim_end_matches('/');
        if registry.is_empty() || host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return Err(format!("{flag:?}: expected REGISTRY=URL with a host and no path"));
        }
        Ok((registry.to_string(), Endpoint { host: host.to_string(), plain_http }))
    }

    /// The endpoint an image is fetched from: its registry's mirror, else the
    /// registry itself (Docker Hub is `registry-1.docker.io`).
    pub fn endpoint(&self, image: &ImageRef) -> Endpoint {
        if let Some(mirror) = self.mirrors.get(&image.registry) {
            return mirror.clone();
        }
        let host = if image.registry == DOCKER_HUB { "registry-1.docker.io" } else { image.registry.as_str() };
        Endpoint { host: host.to_string(), plain_http: false }
    }

    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure.iter().any(|h| h == host)
    }

    /// A plain-HTTP mirror must also be an insecure registry.
    pub fn check(&self) -> Result<(), String> {
        for (registry, mirror) in &self.mirrors {
            if mirror.plain_http && !self.is_insecure(&mirror.host) {
                return Err(format!(
                    "--registry-mirror {registry}=http://{}: plain HTTP needs --insecure-registry {}",
                    mirror.host, mirror.host
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(image: &str) -> ImageRef {
        ImageRef::parse(image).unwrap()
    }

    #[test]
    fn unqualified_names_are_docker_hub_and_single_components_are_library() {
        let seed = parse("kubevirt/cirros-container-disk-demo:latest");
        assert_eq!(seed.to_string(), "docker.io/kubevirt/cirros-container-disk-demo:latest");
        assert_eq!(parse("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(parse("docker.io/busybox:1.36").to_string(), "docker.io/library/busybox:1.36");
        assert_eq!(parse("localhost/a/b").registry, "localhost");
        let local = parse("127.0.0.1:5000/disks/alpine:3.19");
        assert_eq!((local.registry.as_str(), local.repository.as_str()), ("127.0.0.1:5000", "disks/alpine"));
        assert_eq!(local.tag.as_deref(), Some("3.19"));
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = parse(&format!("quay.io/x/y@{digest}"));
        assert_eq!((pinned.tag, pinned.digest.as_deref()), (None, Some(digest.as_str())));
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in ["", "/abs", "a//b", "../x", "UPPER/case", "x:", "x:-tag", "x@sha256:12", "x@md5:00", "a/../b"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_default_pull_policy_is_always_for_latest_only() {
        assert_eq!(parse("busybox").default_policy(), PullPolicy::Always);
        assert_eq!(parse("busybox:latest").default_policy(), PullPolicy::Always);
        assert_eq!(parse("busybox:1.36").default_policy(), PullPolicy::IfNotPresent);
        let pinned = parse(&format!("busybox@sha256:{}", "0".repeat(64)));
        assert_eq!(pinned.default_policy(), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::of(Some("Never"), &pinned), Ok(PullPolicy::Never));
        assert!(PullPolicy::of(Some("Sometimes"), &pinned).unwrap_err().contains("Sometimes"));
    }

    #[test]
    fn file_names_are_one_component_and_round_trip() {
        let image = parse("127.0.0.1:5000/a/b:v1");
        let name = image.file_name();
        assert!(!name.contains('/'), "{name}");
        assert_eq!(ImageRef::from_file_name(&name), Some(image));
    }

    #[test]
    fn mirrors_follow_containerd_semantics() {
        let (registry, endpoint) = RegistryConfig::parse_mirror("docker.io=http://127.0.0.1:5000/").unwrap();
        assert_eq!(registry, "docker.io");
        assert_eq!(endpoint, Endpoint { host: "127.0.0.1:5000".into(), plain_http: true });
        let config = RegistryConfig { mirrors: [(registry, endpoint.clone())].into(), insecure: vec![] };
        assert!(config.check().unwrap_err().contains("--insecure-registry 127.0.0.1:5000"));
        let config = RegistryConfig { insecure: vec!["127.0.0.1:5000".into()], ..config };
        config.check().unwrap();
        assert_eq!(config.endpoint(&parse("kubevirt/cirros-container-disk-demo")), endpoint);
        assert_eq!(config.endpoint(&parse("busybox")), endpoint);
        assert_eq!(config.endpoint(&parse("quay.io/a/b")).host, "quay.io");
        let hub = RegistryConfig::default().endpoint(&parse("busybox"));
        assert_eq!(hub, Endpoint { host: "registry-1.docker.io".into(), plain_http: false });
        for bad in ["docker.io", "docker.io=ftp://x", "docker.io=http://x/prefix", "=http://x"] {
            assert!(RegistryConfig::parse_mirror(bad).is_err(), "{bad}");
        }
    }
}
