"""What tests share that is not a fixture: tiny models, data writers, a running server, the
vendored third-party code the fidelity tests compare against. Tests import it as
`from helpers.NAME import ...` (pytest puts tests/ on the path, pyproject's `pythonpath`)."""
