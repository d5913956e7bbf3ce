//! What a KnowledgeBase or Workflow must agree on with its Tenant. Pure: the
//! operator's controllers and the appliance's `apply` act on the answer, the tests
//! check it directly.

use std::collections::BTreeSet;

use crate::knowledgebase::KnowledgeBaseVectorStore;
use crate::tenant::{Sovereignty, VectorStoreKind};
use crate::{KnowledgeBase, Tenant, Workflow};

/// A provider the tenant may call: its own model server, or under `sovereignty:
/// open`, one of its listed `llmProviders`.
fn provider_allowed(tenant: &Tenant, provider: &str) -> Result<(), String> {
    match provider {
        "ollama" if tenant.spec.components.ollama.enabled => Ok(()),
        "ollama" => Err("provider \"ollama\" needs components.ollama.enabled on the tenant".into()),
        _ if tenant.spec.sovereignty == Sovereignty::Strict => Err(format!(
            "provider {provider:?} is external, and the tenant's sovereignty is strict: use \"ollama\", or set sovereignty: open and list it in llmProviders"
        )),
        _ if tenant.spec.llm_providers.iter().any(|p| p.name == provider) => Ok(()),
        _ => Err(format!(
            "provider {provider:?} is not one of the tenant's llmProviders"
        )),
    }
}

pub fn check_knowledge_base(kb: &KnowledgeBase, tenant: &Tenant) -> Result<(), String> {
    if kb.spec.vector_store == KnowledgeBaseVectorStore::Qdrant
        && tenant.spec.components.vector_store.kind != VectorStoreKind::Qdrant
    {
        return Err(
            "vectorStore is qdrant but the tenant runs no Qdrant: use inherit or pgvector, or set the tenant's components.vectorStore.kind to qdrant".into(),
        );
    }
    if let Some(embedding) = &kb.spec.embedding
        && embedding.provider != "local"
    {
        provider_allowed(tenant, &embedding.provider).map_err(|e| format!("embedding: {e}"))?;
    }
    Ok(())
}

pub fn check_workflow(
    workflow: &Workflow,
    tenant: &Tenant,
    knowledge_bases: &BTreeSet<String>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for agent in &workflow.spec.agents {
        if let Err(e) = provider_allowed(tenant, &agent.provider) {
            problems.push(format!("agent {:?}: {e}", agent.name));
        }
        if let Some(kb) = &agent.knowledge_base
            && !knowledge_bases.contains(kb)
        {
            problems.push(format!(
                "agent {:?}: knowledge base {kb:?} does not exist in this namespace",
                agent.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
