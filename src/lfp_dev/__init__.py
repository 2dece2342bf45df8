"""Developer tools, outside the runtime package: nothing here runs inside a stage."""
