"""Lip-sync generator networks (Wav2Lip) and their loaders."""
