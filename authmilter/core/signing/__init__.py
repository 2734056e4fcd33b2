"""What we add to our own users' mail and to mail we forward: DKIM signatures (`dkim`) and ARC
sets (`arc`), with keys parsed once at load (authmilter.files.keys)."""
