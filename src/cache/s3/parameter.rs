//! A secret kept beside the bucket, in the same account: an SSM parameter (SecureString) read
//! with the same credentials as the cache. `init` keeps the signing key there, readable by CI's
//! role only, so that no long-lived secret is pasted into the CI.

use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_smithy_types::error::display::DisplayErrorContext;
use zeroize::Zeroizing;

use crate::cache::{CacheUrl, OpenOptions};

#[derive(Debug, thiserror::Error)]
pub enum ParameterError {
    #[error("the SSM parameter {name} does not exist (in region {region})")]
    NotFound { name: String, region: String },
    #[error(
        "the SSM parameter {name} may not be read with these credentials ({source_of}): {message}"
    )]
    Refused {
        name: String,
        source_of: String,
        message: String,
    },
    #[error("could not read the SSM parameter {name}: {message}")]
    Other { name: String, message: String },
}

/// The decrypted value of the parameter `name`, in the account and region `url`'s credentials
/// and region name. The value is never logged.
pub async fn read_secure(
    url: &CacheUrl,
    opts: &OpenOptions,
    name: &str,
) -> Result<Zeroizing<String>, ParameterError> {
    let sdk = super::sdk_config(url, opts).await;
    let region = sdk
        .region()
        .map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
    let client = aws_sdk_ssm::Client::new(&sdk);
    match client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
    {
        Ok(out) => Ok(Zeroizing::new(
            out.parameter()
                .and_then(|p| p.value())
                .unwrap_or_default()
                .to_owned(),
        )),
        Err(err) => {
            let code = err.as_service_error().and_then(|e| e.code()).unwrap_or("");
            let message = DisplayErrorContext(&err).to_string();
            Err(match code {
                "ParameterNotFound" => ParameterError::NotFound {
                    name: name.to_owned(),
                    region,
                },
                "AccessDeniedException" | "AccessDenied" => ParameterError::Refused {
                    name: name.to_owned(),
                    source_of: super::credential_source_of(url, opts).unwrap_or_default(),
                    message,
                },
                _ => ParameterError::Other {
                    name: name.to_owned(),
                    message,
                },
            })
        }
    }
}
