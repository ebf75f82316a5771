"""The click command line: parse, call the API, print, map errors to exit codes."""
