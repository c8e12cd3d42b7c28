//! Who may use the HTTP service: the bearer token (from a file, the environment or the command
//! line), the `Host` names answered, and the file limit the server needs to stay reachable.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use lpcmon_api::HostPolicy;

/// Below this many bytes a token gets a warning: it may be guessable.
const SHORT_TOKEN: usize = 16;

/// The token the service will require, if any, after checking it is usable.
///
/// `from_args` is `--token` (or `LPCMON_TOKEN`, which clap folds into it); `env` is the
/// environment's `LPCMON_TOKEN`, to tell whether the value came from the command line.
pub fn resolve_token(
    from_args: Option<&str>,
    token_file: Option<&Path>,
    env: Option<&str>,
) -> anyhow::Result<Option<String>> {
    // clap folds LPCMON_TOKEN into `--token`; a value that is not the environment's came
    // from the command line.
    let on_command_line = from_args.is_some_and(|t| env != Some(t));
    let token = match (from_args, token_file) {
        (Some(_), Some(_)) if on_command_line => {
            bail!("give the token once: --token or --token-file, not both")
        }
        (Some(_), Some(path)) => {
            tracing::info!(path = %path.display(), "using --token-file rather than LPCMON_TOKEN");
            Some(read_token_file(path)?)
        }
        (None, Some(path)) => Some(read_token_file(path)?),
        (Some(token), None) => {
            if on_command_line {
                tracing::warn!(
                    "--token on the command line is visible to every local user (ps, \
                     /proc/PID/cmdline); use --token-file or LPCMON_TOKEN instead"
                );
            }
            Some(token.to_owned())
        }
        (None, None) => None,
    };
    if let Some(token) = &token {
        check_token(token)?;
    }
    Ok(token)
}

/// Refuses a token that protects nothing; warns about one that protects little.
fn check_token(token: &str) -> anyhow::Result<()> {
    if token.trim().is_empty() {
        bail!(
            "the bearer token is empty or only whitespace, which would let anyone in: \
             give a real secret (e.g. `openssl rand -hex 32`), or no token on loopback"
        );
    }
    if token.trim() != token {
        bail!("the bearer token starts or ends with whitespace, which clients cannot send reliably");
    }
    if token.len() < SHORT_TOKEN {
        tracing::warn!(
            len = token.len(),
            "the bearer token is shorter than {SHORT_TOKEN} bytes and may be guessed; \
             use a long random one (e.g. `openssl rand -hex 32`)"
        );
    }
    Ok(())
}

fn read_token_file(path: &Path) -> anyhow::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            bail!(
                "refusing the token file {}: its mode {mode:03o} lets every user read it; \
                 run `chmod o-rwx {}`",
                path.display(),
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // A trailing newline from `echo secret > file` is not part of the secret.
    Ok(text.trim().to_owned())
}

/// Which `Host` values the service answers on `listen`. See [`HostPolicy`].
pub fn host_policy(listen: SocketAddr, allowed_hosts: &[String]) -> HostPolicy {
    if listen.ip().is_loopback() || !allowed_hosts.is_empty() {
        HostPolicy::Loopback {
            also: allowed_hosts.to_vec(),
        }
    } else {
        HostPolicy::Any
    }
}

/// Descriptors kept back from the HTTP connection cap for everything else: the port's
/// listener and its 64 connections, the sensor, logs, the runtime.
#[cfg(unix)]
const FD_RESERVE: u64 = 128;

/// Raises the soft limit on open files to the hard limit, so many HTTP clients and producers
/// do not run the process out of descriptors (the default soft limit is often 1024 or less),
/// and returns the HTTP connection cap that fits in it: `wanted`, or less when the limit is
/// too low to hold that many connections beside [`FD_RESERVE`] other descriptors. Accepting
/// until EMFILE would starve the port and `/healthz` alike.
#[cfg(unix)]
pub fn raise_file_limit(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
                hard
            }
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return wanted;
        }
    };
    let fits = usize::try_from(soft.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX);
    if fits < wanted {
        tracing::warn!(
            open_file_limit = soft,
            max_http_connections = fits,
            "the open-file limit is low: serving at most {fits} HTTP connections at once \
             (raise it with `ulimit -n` or LimitNOFILE=)"
        );
        return fits;
    }
    wanted
}

#[cfg(not(unix))]
pub fn raise_file_limit(wanted: usize) -> usize {
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_and_blank_tokens() {
        assert!(resolve_token(Some(""), None, Some("")).is_err());
        assert!(resolve_token(Some("   "), None, None).is_err());
        assert!(resolve_token(Some(" padded-token-0123456789 "), None, None).is_err());
        assert_eq!(
            resolve_token(Some("0123456789abcdef"), None, None)
                .unwrap()
                .as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(resolve_token(None, None, None).unwrap(), None);
    }

    #[cfg(unix)]
    #[test]
    fn token_file_must_not_be_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve_token(None, Some(&path), None).unwrap_err().to_string();
        assert!(err.contains("644") && err.contains("chmod"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            resolve_token(None, Some(&path), None).unwrap().as_deref(),
            Some("0123456789abcdef0123")
        );
        // The file wins over LPCMON_TOKEN; with --token on the command line it is ambiguous.
        let env = "from-the-environment-0123";
        assert_eq!(
            resolve_token(Some(env), Some(&path), Some(env))
                .unwrap()
                .as_deref(),
            Some("0123456789abcdef0123")
        );
        assert!(resolve_token(Some(env), Some(&path), None).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(resolve_token(None, Some(&path), None).is_err());
    }

    #[test]
    fn loopback_listeners_answer_loopback_names_only() {
        let lo: SocketAddr = "127.0.0.1:7878".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7878".parse().unwrap();
        assert_eq!(host_policy(lo, &[]), HostPolicy::Loopback { also: vec![] });
        assert_eq!(host_policy(any, &[]), HostPolicy::Any);
        assert_eq!(
            host_policy(any, &["proxy".into()]),
            HostPolicy::Loopback {
                also: vec!["proxy".into()]
            }
        );
    }
}
