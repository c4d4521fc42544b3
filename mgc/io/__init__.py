"""Storage, manifests and the uri policy: every byte mgc reads or writes goes through here."""
