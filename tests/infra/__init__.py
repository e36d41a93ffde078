"""Test infrastructure: real services (e.g. an S3 server) that the test suite starts and stops itself."""
