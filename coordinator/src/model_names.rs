//! The names the HTTP API knows the pool's model by, as users write them: the model file's or folder's
//! name (`SmolLM2-135M-Instruct.Q4_1.gguf`, with or without its extension), the name the model gives
//! itself (a GGUF's `general.name`), and the operator's `--model-alias`es. `/v1/models` lists the
//! aliases and the file names; a request's `model` may be any of these. An unknown name is served
//! anyway (the pool serves one model, and clients send whatever their configuration says), unless the
//! coordinator runs with `--strict-model`.

use std::path::Path;

use modelpool::membership::WorkerDescription;

#[derive(Debug, Clone, Default)]
pub struct ModelNames {
    /// The operator's names for the model, listed first.
    pub aliases: Vec<String>,
    /// Refuse a request naming a model none of the names matches.
    pub strict: bool,
}

impl ModelNames {
    /// What `/v1/models` lists for workers serving these models: the aliases, then each model's file or
    /// folder name, once each.
    pub fn listed<'a>(&self, workers: impl IntoIterator<Item = &'a WorkerDescription>) -> Vec<String> {
        let mut names = self.aliases.clone();
        for worker in workers {
            let file = file_name(&worker.model_path).unwrap_or_else(|| worker.model_name.clone());
            if !file.is_empty() && !names.contains(&file) {
                names.push(file);
            }
        }
        names
    }

    /// Whether a request naming `requested` may be served by workers serving these models: always,
    /// unless strict; then it must be an alias, a model's file or folder name (the extension may be left
    /// out), its path as the worker was given it, or the model's own name. With no worker registered
    /// there is nothing to check against: the scheduler's answer (wait, or no workers) decides.
    pub fn accepts(&self, requested: &str, workers: &[&WorkerDescription]) -> bool {
        if !self.strict || workers.is_empty() || self.aliases.iter().any(|alias| alias == requested) {
            return true;
        }
        workers.iter().any(|worker| {
            let path = Path::new(&worker.model_path);
            let stem = path.file_stem().map(|s| s.to_string_lossy());
            requested == worker.model_name
                || requested == worker.model_path
                || file_name(&worker.model_path).is_some_and(|file| file == requested)
                || stem.is_some_and(|stem| stem == requested)
        })
    }
}

/// The last part of a model path: the GGUF file's name, or an mlx-lm folder's (a trailing `/` ignored).
fn file_name(model_path: &str) -> Option<String> {
    Path::new(model_path).file_name().map(|name| name.to_string_lossy().into_owned()).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(model_path: &str, model_name: &str) -> WorkerDescription {
        WorkerDescription { model_path: model_path.into(), model_name: model_name.into(), ..WorkerDescription::default() }
    }

    #[test]
    fn lists_aliases_then_file_names_once() {
        let names = ModelNames { aliases: vec!["smollm2".into()], strict: false };
        let gguf = worker("/cache/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2 135M Instruct");
        let same = worker("/other/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2 135M Instruct");
        let folder = worker("/models/SmolLM2-135M-Instruct-mlx/", "SmolLM2-135M-Instruct-mlx");
        assert_eq!(names.listed([&gguf, &same, &folder]), ["smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct-mlx"]);
        assert_eq!(ModelNames::default().listed([]), Vec::<String>::new());
    }

    #[test]
    fn a_strict_pool_accepts_every_name_users_write_and_nothing_else() {
        let gguf = worker("/cache/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2 135M Instruct");
        let strict = ModelNames { aliases: vec!["smollm2".into()], strict: true };
        for name in [
            "smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct.Q4_1",
            "SmolLM2 135M Instruct",
            "/cache/SmolLM2-135M-Instruct.Q4_1.gguf",
        ] {
            assert!(strict.accepts(name, &[&gguf]), "{name}");
        }
        for name in ["gpt-4o", "smollm", "SmolLM2-135M-Instruct", ""] {
            assert!(!strict.accepts(name, &[&gguf]), "{name}");
        }
        assert!(strict.accepts("gpt-4o", &[]), "no worker to check against: the scheduler decides");
        let lenient = ModelNames { aliases: Vec::new(), strict: false };
        assert!(lenient.accepts("gpt-4o", &[&gguf]), "without --strict-model any name is served");
    }
}
