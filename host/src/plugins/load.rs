//! One plugin load beside the supervisor's loop: what it depends on
//! (`LoadInputs`), the compile (in a child process, or from the cache),
//! instantiate, `describe` and `init` under the call limits, and what it
//! produced (`LoadOutcome`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use super::check::CheckPlugin;
use super::engine::{self, LoadError, PluginEngine};
use super::runner::{self, Limits, PluginInfo};
use super::{background, compile_child, folder, signature, system};

/// What a load depends on: the same inputs give the same outcome, so a
/// plugin is (re)loaded only when one of them changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LoadInputs {
    pub(super) digest: [u8; 32],
    pub(super) settings: Vec<(String, String)>,
    pub(super) limits: Limits,
    /// With `trustedKeys` set: the keys and the signature file's digest, so
    /// a new signature or another set of keys loads the plugin again.
    pub(super) trust: Option<TrustInputs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TrustInputs {
    /// Base64 key lines (`agent.plugins.trustedKeys`, files read).
    pub(super) keys: Vec<String>,
    /// SHA-256 of `<name>.wasm.minisig`, if there is one.
    pub(super) signature: Option<[u8; 32]>,
}

/// A plugin compiled, instantiated and initialised, not yet running.
pub struct Ready {
    pub(super) inputs: LoadInputs,
    pub(super) kind: ReadyKind,
    pub(super) from_cache: bool,
    pub(super) compile_time: Duration,
}

/// What a load produced, by world.
// `Ready` travels boxed (`LoadOutcome`): the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum ReadyKind {
    Metadata {
        spec: runner::Spec,
        live: runner::Live,
        info: PluginInfo,
    },
    Check(Arc<CheckPlugin>),
}

/// The end of one load, sent back to the supervisor (see
/// [`PluginHost::finish_load`]).
pub struct LoadOutcome {
    pub(super) name: String,
    /// Which request this answers: only the newest request's outcome counts.
    pub(super) id: u64,
    pub(super) path: PathBuf,
    pub(super) result: Result<Box<Ready>, FailedLoad>,
}

impl std::fmt::Debug for LoadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOutcome")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("ok", &self.result.is_ok())
            .finish()
    }
}

/// One load: read the file, compile (or load from the cache) on a blocking
/// thread, then instantiate, `describe` and `init` under the call limits.
pub(super) struct Load {
    pub(super) engine: Arc<PluginEngine>,
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) inputs: LoadInputs,
    pub(super) child_limits: compile_child::ChildLimits,
}

/// A load that failed: what it was loaded with, the `plugin_loads_total`
/// result, and why.
pub(super) struct FailedLoad {
    pub(super) inputs: LoadInputs,
    pub(super) result: &'static str,
    pub(super) message: String,
}

/// The `plugin_loads_total` result of a failed load.
fn load_result_label(error: &LoadError) -> &'static str {
    match error {
        LoadError::Untrusted(_) => "untrusted",
        LoadError::CompileChild(_) => "compile_failed",
        _ => "error",
    }
}

impl Load {
    pub(super) async fn run(self, id: u64) -> LoadOutcome {
        let Load {
            engine,
            name,
            path,
            mut inputs,
            child_limits,
        } = self;
        let started = std::time::Instant::now();
        let fail = |inputs: LoadInputs, error: LoadError| LoadOutcome {
            name: name.clone(),
            id,
            path: path.clone(),
            result: Err(FailedLoad {
                inputs,
                result: load_result_label(&error),
                message: error.to_string(),
            }),
        };
        // Reading, verifying and mapping block: keep them off the async
        // workers, on a thread of low priority. Nobody waits for it at
        // shutdown; its result is dropped.
        let file = path.clone();
        let keys = inputs.trust.as_ref().map(|t| t.keys.clone());
        let cached = engine.clone();
        let read = background::spawn("ygg-plugin-load", move || {
            let bytes = folder::read_trusted_plugin_file(&file)?;
            // The file may have changed since the scan: what loads is what
            // was read now, and the inputs say so.
            let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
            let mut signature_digest = None;
            if let Some(keys) = keys {
                let signature = signature::read_signature(&file).map_err(LoadError::Untrusted)?;
                signature_digest = signature
                    .as_deref()
                    .map(|text| <[u8; 32]>::from(sha2::Sha256::digest(text.as_bytes())));
                signature::verify(&keys, &bytes, signature.as_deref())
                    .map_err(LoadError::Untrusted)?;
            }
            // Only verified bytes get here: a refused plugin never runs
            // from the cache.
            let prepared = cached.prepare_cached(&bytes, &digest)?;
            Ok::<_, LoadError>((bytes, digest, signature_digest, prepared))
        });
        let read = match read {
            Ok(answer) => answer.await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let (bytes, digest, signature_digest, prepared) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => return fail(inputs, error),
            Err(error) => {
                return fail(
                    inputs,
                    LoadError::Read(format!("the loader thread failed: {error}")),
                );
            }
        };
        inputs.digest = digest;
        if let Some(trust) = &mut inputs.trust {
            trust.signature = signature_digest;
        }
        let prepared = match prepared {
            Some(prepared) => prepared,
            None => {
                // Not in the cache: compile in a child process (killed if
                // this task is dropped), then map its code.
                let code = match compile_child::compile(&bytes, child_limits).await {
                    Ok(code) => code,
                    Err(compile_child::ChildError::Compile(message)) => {
                        return fail(inputs, LoadError::Compile(message));
                    }
                    Err(error) => return fail(inputs, LoadError::CompileChild(error.to_string())),
                };
                drop(bytes);
                let compiled = engine.clone();
                let mapped = background::spawn("ygg-plugin-load", move || {
                    let prepared = compiled.prepare_compiled(&code, &digest);
                    engine::release_freed_memory();
                    prepared
                });
                let mapped = match mapped {
                    Ok(answer) => answer.await.map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                match mapped {
                    Ok(Ok(prepared)) => prepared,
                    Ok(Err(error)) => return fail(inputs, error),
                    Err(error) => {
                        return fail(
                            inputs,
                            LoadError::Read(format!("the loader thread failed: {error}")),
                        );
                    }
                }
            }
        };
        let fail = |inputs: LoadInputs, message: String| LoadOutcome {
            name: name.clone(),
            id,
            path: path.clone(),
            result: Err(FailedLoad {
                inputs,
                result: "error",
                message,
            }),
        };
        let compile_time = started.elapsed();
        let name_arc: Arc<str> = Arc::from(name.as_str());
        let kind = match prepared.pre {
            engine::PreparedPre::Metadata(pre) => {
                let spec = runner::Spec {
                    name: name_arc,
                    pre,
                    settings: inputs.settings.clone(),
                    limits: inputs.limits,
                };
                match runner::instantiate(&engine, &spec, Arc::new(system::read())).await {
                    Ok((live, info)) => ReadyKind::Metadata {
                        spec,
                        live,
                        info: PluginInfo::from(info),
                    },
                    Err(error) => return fail(inputs, format!("init {error}")),
                }
            }
            engine::PreparedPre::Check(pre) => {
                let plugin = CheckPlugin::new(
                    name_arc,
                    engine.clone(),
                    pre,
                    inputs.settings.clone(),
                    inputs.limits,
                );
                if let Err(error) = plugin.try_instantiate().await {
                    return fail(inputs, format!("instantiation {error}"));
                }
                ReadyKind::Check(Arc::new(plugin))
            }
        };
        LoadOutcome {
            name,
            id,
            path,
            result: Ok(Box::new(Ready {
                inputs,
                kind,
                from_cache: prepared.from_cache,
                compile_time,
            })),
        }
    }
}
