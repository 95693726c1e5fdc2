"""Task readers, the normalised example schema, prompts and submission files."""
