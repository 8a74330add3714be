"""Sound: wav/flac I/O, the log-mel front end (signal) and log-mel pictures (plots)."""
