//! Resolver errors: a [`Code`] in `extensions.code`, core errors mapped through [`ApiError`].
use async_graphql::Error;

use crate::error::ApiError;
pub use crate::error::Code;

/// An error with `code` and `message`.
pub fn error(code: Code, message: impl Into<String>) -> Error {
    ApiError::new(code, message).gql()
}

/// A core error as a GraphQL error. Internal failures are logged and reported without their
/// details.
pub fn core(err: recall_core::Error) -> Error {
    ApiError::from(err).gql()
}

/// `Result` of resolvers.
pub type GqlResult<T> = async_graphql::Result<T>;

/// Converts core results inside resolvers: `engine.x().await.gql()?`.
pub trait IntoGql<T> {
    /// Maps the error with [`core()`].
    fn gql(self) -> GqlResult<T>;
}

impl<T> IntoGql<T> for recall_core::Result<T> {
    fn gql(self) -> GqlResult<T> {
        self.map_err(core)
    }
}
