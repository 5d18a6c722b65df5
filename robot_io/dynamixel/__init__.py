"""Dynamixel Protocol 2.0: packet codec (`protocol`) and X-series control tables (`control_table`)."""
