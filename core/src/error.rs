//! The one error type of `recall-core`. Variants are named by what the caller can do about them;
//! every front door (CLI, GraphQL, Python, Node) maps them exhaustively.
use std::path::PathBuf;

/// Errors returned by `recall-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was rejected before anything was written: fix the input and retry.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What was wrong, naming the field (and line, for files) where it can.
        message: String,
    },
    /// The object does not exist, or does not belong to the calling user (the two are not
    /// told apart, so ids of other users cannot be probed).
    #[error("{what} not found: {id}")]
    NotFound {
        /// The kind of object ("user", "session", "memory").
        what: &'static str,
        /// The id that was asked for.
        id: String,
    },
    /// A model's files are missing or malformed. Fetch them (`deep-recall models fetch`) or
    /// point the configuration at a valid directory.
    #[error("model error: {message}")]
    Model {
        /// What is missing or wrong, naming the path.
        message: String,
    },
    /// A backing service (database, model worker, remote host) cannot be reached or has
    /// stopped. Retrying later may succeed.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// The underlying failure, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The work was refused because a bounded queue is full. Back off and retry.
    #[error("overloaded: {message}")]
    Overloaded {
        /// Which queue is full.
        message: String,
    },
    /// A database statement failed.
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The tensor backend (candle) failed while running a model.
    #[error("inference backend error: {0}")]
    Backend(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// A bug or broken invariant inside Deep Recall.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The broad class of an [`Error`], for mapping errors at the edges (exit codes, GraphQL
/// codes, exception classes). Unlike [`Error`] it is exhaustive: adding a class breaks every
/// edge's `match` until it is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad input; see [`Error::InvalidInput`].
    InvalidInput,
    /// Missing object; see [`Error::NotFound`].
    NotFound,
    /// Missing or broken model files; see [`Error::Model`].
    Model,
    /// Backing service down; see [`Error::Unavailable`].
    Unavailable,
    /// Queue full; see [`Error::Overloaded`].
    Overloaded,
    /// Anything else: database, backend, I/O or internal failures.
    Internal,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Model { .. } => ErrorKind::Model,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Overloaded { .. } => ErrorKind::Overloaded,
            // A full disk: retry once there is room.
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                ErrorKind::Unavailable
            }
            Error::Database(_) | Error::Backend(_) | Error::Io { .. } | Error::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// An [`Error::InvalidInput`] with the given message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput {
            message: message.into(),
        }
    }

    /// An [`Error::NotFound`].
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            id: id.into(),
        }
    }

    /// An [`Error::Model`] with the given message.
    pub fn model(message: impl Into<String>) -> Self {
        Self::Model {
            message: message.into(),
        }
    }

    /// An [`Error::Unavailable`] with no underlying error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Opening or reading a file the caller named (an import, a backup to restore, a
    /// settings file): one that is not there is [`Error::NotFound`], one that cannot be read
    /// as named (a folder, no permission, not text) is [`Error::InvalidInput`] -- the caller's
    /// to mend, not the service's; other failures are [`Error::Io`].
    pub fn input_file(path: &std::path::Path, source: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        match source.kind() {
            Io::NotFound => Self::not_found("file", path.display().to_string()),
            Io::PermissionDenied | Io::IsADirectory | Io::InvalidData | Io::InvalidInput => {
                Self::invalid(format!("cannot read {}: {source}", path.display()))
            }
            _ => Self::io(path, source),
        }
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        match err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Self::Unavailable {
                message: "database connection failed".into(),
                source: Some(Box::new(err)),
            },
            other if storage_full(&other) => Self::Unavailable {
                message: "the disk is full: nothing of this request was written; free space \
                          and retry"
                    .into(),
                source: Some(Box::new(other)),
            },
            other => Self::Database(Box::new(other)),
        }
    }
}

/// Whether the database refused a write for want of space: SQLite's `SQLITE_FULL` (13) and
/// Postgres' `disk_full` (53100). The write was rolled back; the caller may retry once there
/// is room, so it is `Unavailable`, not an internal error.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn storage_full(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    let Some(db) = e.as_database_error() else {
        return false;
    };
    // SQLite reports extended codes too (the primary code is the low byte).
    let sqlite_full = db
        .code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 13);
    sqlite_full || db.code().as_deref() == Some("53100")
}

impl From<tokenizers::Error> for Error {
    fn from(err: tokenizers::Error) -> Self {
        Self::Model {
            message: format!("tokenizer: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_unavailable_and_other_io_errors_are_internal() {
        let full = Error::io("/data/x", std::io::ErrorKind::StorageFull.into());
        assert_eq!(full.kind(), ErrorKind::Unavailable);
        let denied = Error::io("/data/x", std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(denied.kind(), ErrorKind::Internal);
    }
}
