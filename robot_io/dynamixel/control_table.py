"""Control tables of the Dynamixel X servos used on Koch-class arms: XL330, XL430, XM430.

Addresses, sizes, access and factory defaults follow the ROBOTIS e-manual pages of each model
(Protocol 2.0 tables). Names are the e-manual's, with spaces as underscores, except where a name
is shared with the Feetech table for the same meaning (Min/Max_Position_Limit, Present_Voltage).
Positions are 4096 ticks per turn, 2048 at the centre. Return_Delay_Time is in units of 2 us
(factory 250 = 500 us); lower it to 0 for fast control loops (docs/serial.md).
"""

from __future__ import annotations

import dataclasses

EEPROM_END = 64  # addresses below this are EEPROM: writable only with torque off


@dataclasses.dataclass(frozen=True)
class Register:
    address: int
    size: int
    access: str = "RW"  # "R" or "RW"
    signed: bool = False  # two's complement
    default: int = 0


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    number: int
    registers: dict[str, Register]
    firmware: int = 52  # Firmware_Version the virtual servo reports


R, RW = "R", "RW"

# Registers every X-series servo shares, at the same addresses.
_COMMON = {
    "Model_Number": Register(0, 2, R),
    "Model_Information": Register(2, 4, R),
    "Firmware_Version": Register(6, 1, R),
    "ID": Register(7, 1, RW, default=1),
    "Baud_Rate": Register(8, 1, RW, default=1),  # 0: 9600, 1: 57600, 2: 115200, 3: 1M, 4: 2M ...
    "Return_Delay_Time": Register(9, 1, RW, default=250),  # x 2 us
    "Drive_Mode": Register(10, 1, RW),
    "Operating_Mode": Register(11, 1, RW, default=3),  # 3: position control
    "Secondary_ID": Register(12, 1, RW, default=255),
    "Protocol_Type": Register(13, 1, RW, default=2),
    "Homing_Offset": Register(20, 4, RW, signed=True),
    "Moving_Threshold": Register(24, 4, RW, default=10),
    "Temperature_Limit": Register(31, 1, RW),
    "Max_Voltage_Limit": Register(32, 2, RW),
    "Min_Voltage_Limit": Register(34, 2, RW),
    "PWM_Limit": Register(36, 2, RW, default=885),
    "Velocity_Limit": Register(44, 4, RW),
    "Max_Position_Limit": Register(48, 4, RW, default=4095),
    "Min_Position_Limit": Register(52, 4, RW, default=0),
    "Shutdown": Register(63, 1, RW, default=52),
    "Torque_Enable": Register(64, 1, RW),
    "LED": Register(65, 1, RW),
    "Status_Return_Level": Register(68, 1, RW, default=2),  # 2: reply to every instruction
    "Registered_Instruction": Register(69, 1, R),
    "Hardware_Error_Status": Register(70, 1, R),
    "Velocity_I_Gain": Register(76, 2, RW),
    "Velocity_P_Gain": Register(78, 2, RW),
    "Position_D_Gain": Register(80, 2, RW),
    "Position_I_Gain": Register(82, 2, RW),
    "Position_P_Gain": Register(84, 2, RW),
    "Feedforward_2nd_Gain": Register(88, 2, RW),
    "Feedforward_1st_Gain": Register(90, 2, RW),
    "Bus_Watchdog": Register(98, 1, RW),
    "Goal_PWM": Register(100, 2, RW, signed=True),
    "Goal_Velocity": Register(104, 4, RW, signed=True),
    "Profile_Acceleration": Register(108, 4, RW),
    "Profile_Velocity": Register(112, 4, RW),
    "Goal_Position": Register(116, 4, RW, signed=True),
    "Realtime_Tick": Register(120, 2, R),
    "Moving": Register(122, 1, R),
    "Moving_Status": Register(123, 1, R),
    "Present_PWM": Register(124, 2, R, signed=True),
    "Present_Velocity": Register(128, 4, R, signed=True),  # x 0.229 rev/min
    "Present_Position": Register(132, 4, R, signed=True),
    "Velocity_Trajectory": Register(136, 4, R, signed=True),
    "Position_Trajectory": Register(140, 4, R, signed=True),
    "Present_Voltage": Register(144, 2, R),  # e-manual: Present_Input_Voltage, x 0.1 V
    "Present_Temperature": Register(146, 1, R),
    "Backup_Ready": Register(147, 1, R),
}


def _model(name: str, number: int, overrides: dict[str, Register], extra: dict[str, Register]) -> Model:
    registers = {**_COMMON, **extra}
    for key, reg in overrides.items():
        registers[key] = reg
    registers["Model_Number"] = Register(0, 2, R, default=number)
    return Model(name, number, dict(sorted(registers.items(), key=lambda kv: kv[1].address)))


# Current-sensing models (XL330, XM430) have a current limit, a goal current and present current at
# 126; the XL430 has no current sensor and reports Present_Load (x 0.1 %) at 126 instead.
_CURRENT = {
    "Current_Limit": Register(38, 2, RW),
    "Goal_Current": Register(102, 2, RW, signed=True),
    "Present_Current": Register(126, 2, R, signed=True),
}

MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        _model("xl330-m077", 1190, {
            "Temperature_Limit": Register(31, 1, RW, default=70),
            "Max_Voltage_Limit": Register(32, 2, RW, default=70),
            "Min_Voltage_Limit": Register(34, 2, RW, default=35),
            "Current_Limit": Register(38, 2, RW, default=1750),
            "Velocity_Limit": Register(44, 4, RW, default=1620),
        }, {**_CURRENT, "Startup_Configuration": Register(60, 1, RW), "PWM_Slope": Register(62, 1, RW, default=140)}),
        _model("xl330-m288", 1200, {
            "Temperature_Limit": Register(31, 1, RW, default=70),
            "Max_Voltage_Limit": Register(32, 2, RW, default=70),
            "Min_Voltage_Limit": Register(34, 2, RW, default=35),
            "Current_Limit": Register(38, 2, RW, default=1750),
            "Velocity_Limit": Register(44, 4, RW, default=445),
        }, {**_CURRENT, "Startup_Configuration": Register(60, 1, RW), "PWM_Slope": Register(62, 1, RW, default=140)}),
        _model("xl430-w250", 1060, {
            "Temperature_Limit": Register(31, 1, RW, default=72),
            "Max_Voltage_Limit": Register(32, 2, RW, default=140),
            "Min_Voltage_Limit": Register(34, 2, RW, default=60),
            "Velocity_Limit": Register(44, 4, RW, default=265),
        }, {"Present_Load": Register(126, 2, R, signed=True)}),
        _model("xm430-w350", 1020, {
            "Temperature_Limit": Register(31, 1, RW, default=80),
            "Max_Voltage_Limit": Register(32, 2, RW, default=160),
            "Min_Voltage_Limit": Register(34, 2, RW, default=95),
            "Current_Limit": Register(38, 2, RW, default=1193),
            "Velocity_Limit": Register(44, 4, RW, default=200),
        }, {**_CURRENT, "Acceleration_Limit": Register(40, 4, RW, default=32767)}),
        _model("xm430-w210", 1030, {
            "Temperature_Limit": Register(31, 1, RW, default=80),
            "Max_Voltage_Limit": Register(32, 2, RW, default=160),
            "Min_Voltage_Limit": Register(34, 2, RW, default=95),
            "Current_Limit": Register(38, 2, RW, default=1193),
            "Velocity_Limit": Register(44, 4, RW, default=330),
        }, {**_CURRENT, "Acceleration_Limit": Register(40, 4, RW, default=32767)}),
    )
}

BY_NUMBER: dict[int, Model] = {m.number: m for m in MODELS.values()}

# Baud_Rate register value -> bits per second.
BAUD_RATES = {0: 9600, 1: 57600, 2: 115200, 3: 1_000_000, 4: 2_000_000, 5: 3_000_000, 6: 4_000_000}
