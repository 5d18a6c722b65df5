"""Feetech STS/SCS: packet codec (`protocol`) and the STS3215 control table (`control_table`)."""
