//! Escalation policies in the registry: versions are created from a JSON
//! document that is validated once, here, by the fleet contract's own check
//! (so the agent accepts exactly what the controller stored); a document
//! that carries what looks like a key is refused.

use flotilla_contract::PolicyDocument;

use super::{Registry, RegistryError, RegistryResult};
use crate::domain::{EscalationPolicy, Page, PageRequest, PolicyName, PolicySpec, PolicySummary};

impl Registry {
    pub async fn create_policy_version(
        &self,
        name: &PolicyName,
        document: PolicyDocument,
    ) -> RegistryResult<EscalationPolicy> {
        let spec = PolicySpec::try_from(document)
            .map_err(|error| RegistryError::InvalidArgument(error.to_string()))?;
        Ok(self.store.create_policy_version(name, &spec).await?)
    }

    pub async fn policy(
        &self,
        name: &PolicyName,
        version: Option<u32>,
    ) -> RegistryResult<EscalationPolicy> {
        self.store
            .get_policy(name, version)
            .await?
            .ok_or_else(|| match version {
                Some(version) => RegistryError::NotFound(format!(
                    "escalation policy {name} has no version {version}"
                )),
                None => RegistryError::NotFound(format!("escalation policy {name} not found")),
            })
    }

    pub async fn list_policies(&self, page: &PageRequest) -> RegistryResult<Page<PolicySummary>> {
        Ok(self.store.list_policies(page).await?)
    }

    pub async fn list_policy_versions(
        &self,
        name: &PolicyName,
        page: &PageRequest,
    ) -> RegistryResult<Page<EscalationPolicy>> {
        self.policy(name, None).await?;
        Ok(self.store.list_policy_versions(name, page).await?)
    }
}
