"""Test harness: starts REAL backends (Orthanc, dcmqrscp) on free loopback ports for the tests.

Modules:
- ports: `free_port()`
- procs: start / poll / stop helpers (processes are stopped by PID, never by name)
- samples: the sample DICOM files and their ground truth read with pydicom
- orthanc: `start_orthanc()` -> `Orthanc`
- dcmqrscp: `start_dcmqrscp()` -> `Dcmqrscp`
- orthanc_sql: a SELECT over Orthanc's PostgreSQL index (one row per instance)
- fixtures: the session-scoped pytest fixtures (registered in tests/conftest.py)
"""
