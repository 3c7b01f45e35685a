"""Lip-sync engines behind one small interface (`engines.base.Engine`)."""
