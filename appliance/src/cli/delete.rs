//! `iafactory delete`: what the words name. `delete TENANT` stays as it was; a
//! knowledge base or workflow is named the way kubectl names it, `delete KIND NAME -n
//! TENANT`, so a command from the operator's world works here too (`-n iaf-acme`, the
//! namespace, is accepted as well as `-n acme`).

use crate::store::RegisteredKind;

#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Tenant(String),
    Registration {
        tenant: String,
        kind: RegisteredKind,
        name: String,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeleteError {
    #[error(
        "unknown kind {0:?}: `iafactory delete TENANT`, or `delete knowledgebase NAME -n TENANT`, or `delete workflow NAME -n TENANT`"
    )]
    UnknownKind(String),
    #[error("which tenant's {0}? add -n TENANT (or -n iaf-TENANT)")]
    NoTenant(&'static str),
    #[error(
        "-n names the tenant of a knowledge base or workflow; `iafactory delete TENANT` deletes a tenant"
    )]
    NamespaceForTenant,
}

/// `what` is the one or two positional words; `namespace` is `-n`.
pub fn target(what: &[String], namespace: Option<&str>) -> Result<Target, DeleteError> {
    let tenant_of = |kind: RegisteredKind| {
        let namespace = namespace.ok_or(DeleteError::NoTenant(kind.word()))?;
        Ok(namespace
            .strip_prefix(iafactory_crds::plan::NAMESPACE_PREFIX)
            .unwrap_or(namespace)
            .to_owned())
    };
    match what {
        [tenant] if namespace.is_none() => Ok(Target::Tenant(tenant.clone())),
        [_] => Err(DeleteError::NamespaceForTenant),
        [kind, name] => {
            let kind = match kind.to_ascii_lowercase().as_str() {
                "tenant" | "tenants" if namespace.is_none() => {
                    return Ok(Target::Tenant(name.clone()));
                }
                "tenant" | "tenants" => return Err(DeleteError::NamespaceForTenant),
                "knowledgebase" | "knowledgebases" | "kb" => RegisteredKind::KnowledgeBase,
                "workflow" | "workflows" | "wf" => RegisteredKind::Workflow,
                _ => return Err(DeleteError::UnknownKind(kind.clone())),
            };
            Ok(Target::Registration {
                tenant: tenant_of(kind)?,
                kind,
                name: name.clone(),
            })
        }
        _ => Err(DeleteError::UnknownKind(what.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn reads_tenants_and_kubectl_style_kinds() {
        assert_eq!(
            target(&words("acme"), None),
            Ok(Target::Tenant("acme".into()))
        );
        assert_eq!(
            target(&words("tenant acme"), None),
            Ok(Target::Tenant("acme".into()))
        );
        let kb = Target::Registration {
            tenant: "acme".into(),
            kind: RegisteredKind::KnowledgeBase,
            name: "docs".into(),
        };
        assert_eq!(target(&words("knowledgebase docs"), Some("acme")), Ok(kb));
        assert_eq!(
            target(&words("wf weekly"), Some("iaf-acme")),
            Ok(Target::Registration {
                tenant: "acme".into(),
                kind: RegisteredKind::Workflow,
                name: "weekly".into(),
            })
        );
    }

    #[test]
    fn says_what_is_missing() {
        assert_eq!(
            target(&words("workflow weekly"), None),
            Err(DeleteError::NoTenant("workflow"))
        );
        assert_eq!(
            target(&words("pods web"), Some("acme")),
            Err(DeleteError::UnknownKind("pods".into()))
        );
        assert_eq!(
            target(&words("acme"), Some("acme")),
            Err(DeleteError::NamespaceForTenant)
        );
    }
}
