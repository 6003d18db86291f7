//! Installing CustomResourceDefinitions into a test cluster.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::Error;

fn client_error(context: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Client {
        context,
        source: Box::new(source),
    }
}

/// Creates each CRD, or replaces it when it exists, and waits until every one is Established.
///
/// Create-or-replace rather than server-side apply: Kubernetes before 1.25 does not know
/// `x-kubernetes-validations`, which its JSON decoding drops but server-side apply refuses.
pub async fn install_crds(
    client: &kube::Client,
    crds: impl IntoIterator<Item = CustomResourceDefinition>,
) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let mut desired = crd;
                desired.metadata.resource_version = api
                    .get(&name)
                    .await
                    .map_err(client_error(format!("reading CRD {name}")))?
                    .metadata
                    .resource_version;
                api.replace(&name, &PostParams::default(), &desired)
                    .await
                    .map_err(client_error(format!("replacing CRD {name}")))?;
            }
            Err(e) => return Err(client_error(format!("creating CRD {name}"))(e)),
        }
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| Error::Config(format!("CRD {name} not Established within 60 s")))?
        .map_err(|e| Error::Client {
            context: format!("waiting for CRD {name}"),
            source: Box::new(e),
        })?;
    }
    Ok(())
}
