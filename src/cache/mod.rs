//! Where a binary cache lives: a local directory (`file://`) or an S3 bucket (`s3://`).
