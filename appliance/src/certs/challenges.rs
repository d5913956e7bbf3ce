//! HTTP-01 challenge responses, written by the ACME client and served by the gateway's
//! plain-HTTP listener at `/.well-known/acme-challenge/TOKEN`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Shared token → key authorization map. Cloning shares the same store.
#[derive(Debug, Clone, Default)]
pub struct ChallengeStore {
    responses: Arc<RwLock<HashMap<String, String>>>,
}

impl ChallengeStore {
    pub fn insert(&self, token: impl Into<String>, key_authorization: impl Into<String>) {
        self.write().insert(token.into(), key_authorization.into());
    }

    pub fn remove(&self, token: &str) {
        self.write().remove(token);
    }

    /// The key authorization to answer for `token`, if a challenge is in progress.
    pub fn response(&self, token: &str) -> Option<String> {
        self.responses
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(token)
            .cloned()
    }

    /// True when no challenge is in progress.
    pub fn is_empty(&self) -> bool {
        self.responses
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_empty()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, String>> {
        self.responses
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
