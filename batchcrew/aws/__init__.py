"""AWS Batch: a launcher, job definitions and a job monitor."""
