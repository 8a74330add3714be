"""The offline demo: its stages (pipeline) and its report (report)."""
