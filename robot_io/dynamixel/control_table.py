"""Control tables of the Dynamixel X servos used on Koch-class arms: XL330, XL430, XM430.

Addresses, sizes, access and factory defaults follow the ROBOTIS e-manual pages of each model
(Protocol 2.0 tables). Names are the e-manual's, with spaces as underscores, except where a name
is shared with the Feetech table for the same meaning (Min/Max_Position_Limit, Present_Voltage).
Positions are 4096 ticks per turn, 2048 at the centre. Return_Delay_Time is in units of 2 us
(factory 250 = 500 us); lower it to 0 for fast control loops (docs/serial.md).

`valid` is the value range (lo, hi) or set a register accepts, from the e-manual's Range column; a
write outside it gets the Data Range Error. Goals bounded by another register (Goal_Position by the
position limits, Goal_Velocity/PWM/Current by theirs) are checked by the servo against those.
Indirect Address n holds the address of one control-table byte that Indirect Data n reads and
writes (e-manual "Indirect Address"); each model lists its blocks as (address 1, data 1, count).
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
    valid: tuple[int, int] | frozenset[int] | None = None

    def accepts(self, value: int) -> bool:
        if self.valid is None:
            return True
        if isinstance(self.valid, frozenset):
            return value in self.valid
        return self.valid[0] <= value <= self.valid[1]


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    number: int
    registers: dict[str, Register]
    firmware: int = 52  # Firmware_Version the virtual servo reports
    indirect: tuple[tuple[int, int, int], ...] = ()  # (Indirect Address 1, Indirect Data 1, count) blocks


R, RW = "R", "RW"

# Registers every X-series servo shares, at the same addresses.
_COMMON = {
    "Model_Number": Register(0, 2, R),
    "Model_Information": Register(2, 4, R),
    "Firmware_Version": Register(6, 1, R),
    "ID": Register(7, 1, RW, default=1, valid=(0, 252)),
    "Baud_Rate": Register(8, 1, RW, default=1, valid=(0, 7)),  # 0: 9600, 1: 57600, 2: 115200, 3: 1M, 4: 2M ...
    "Return_Delay_Time": Register(9, 1, RW, default=250, valid=(0, 254)),  # x 2 us
    "Drive_Mode": Register(10, 1, RW),
    "Operating_Mode": Register(11, 1, RW, default=3, valid=frozenset({0, 1, 3, 4, 5, 16})),  # 3: position
    "Secondary_ID": Register(12, 1, RW, default=255),
    "Protocol_Type": Register(13, 1, RW, default=2),
    "Homing_Offset": Register(20, 4, RW, signed=True, valid=(-1_044_479, 1_044_479)),
    "Moving_Threshold": Register(24, 4, RW, default=10, valid=(0, 1023)),
    "Temperature_Limit": Register(31, 1, RW, valid=(0, 100)),
    "Max_Voltage_Limit": Register(32, 2, RW),
    "Min_Voltage_Limit": Register(34, 2, RW),
    "PWM_Limit": Register(36, 2, RW, default=885, valid=(0, 885)),
    "Velocity_Limit": Register(44, 4, RW),
    "Max_Position_Limit": Register(48, 4, RW, default=4095, valid=(0, 4095)),
    "Min_Position_Limit": Register(52, 4, RW, default=0, valid=(0, 4095)),
    "Shutdown": Register(63, 1, RW, default=52),
    "Torque_Enable": Register(64, 1, RW, valid=(0, 1)),
    "LED": Register(65, 1, RW, valid=(0, 1)),
    "Status_Return_Level": Register(68, 1, RW, default=2, valid=(0, 2)),  # 2: reply to every instruction
    "Registered_Instruction": Register(69, 1, R),
    "Hardware_Error_Status": Register(70, 1, R),
    "Velocity_I_Gain": Register(76, 2, RW, valid=(0, 16383)),
    "Velocity_P_Gain": Register(78, 2, RW, valid=(0, 16383)),
    "Position_D_Gain": Register(80, 2, RW, valid=(0, 16383)),
    "Position_I_Gain": Register(82, 2, RW, valid=(0, 16383)),
    "Position_P_Gain": Register(84, 2, RW, valid=(0, 16383)),
    "Feedforward_2nd_Gain": Register(88, 2, RW, valid=(0, 16383)),
    "Feedforward_1st_Gain": Register(90, 2, RW, valid=(0, 16383)),
    "Bus_Watchdog": Register(98, 1, RW, valid=(0, 127)),
    "Goal_PWM": Register(100, 2, RW, signed=True),  # within +-PWM_Limit
    "Goal_Velocity": Register(104, 4, RW, signed=True),  # within +-Velocity_Limit
    "Profile_Acceleration": Register(108, 4, RW, valid=(0, 32767)),
    "Profile_Velocity": Register(112, 4, RW, valid=(0, 32767)),
    "Goal_Position": Register(116, 4, RW, signed=True),  # within the position limits in position mode
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


def _indirect(blocks: tuple[tuple[int, int, int], ...]) -> dict[str, Register]:
    """Indirect Address n (2 bytes, factory value: the address of Indirect Data n) and Indirect Data n."""
    registers, n = {}, 0
    for first_address, first_data, count in blocks:
        for k in range(count):
            n += 1
            registers[f"Indirect_Address_{n}"] = Register(first_address + 2 * k, 2, RW, default=first_data + k)
            registers[f"Indirect_Data_{n}"] = Register(first_data + k, 1, RW)
    end = max(d + c for _, d, c in blocks)
    for reg_name in [k for k in registers if k.startswith("Indirect_Address")]:
        registers[reg_name] = dataclasses.replace(registers[reg_name], valid=(64, end - 1))  # RAM only
    return registers


def _model(name: str, number: int, overrides: dict[str, Register], extra: dict[str, Register],
           indirect: tuple[tuple[int, int, int], ...]) -> Model:
    registers = {**_COMMON, **extra, **_indirect(indirect)}
    for key, reg in overrides.items():
        registers[key] = dataclasses.replace(reg, valid=reg.valid or _COMMON.get(key, reg).valid)
    registers["Model_Number"] = Register(0, 2, R, default=number)
    return Model(name, number, dict(sorted(registers.items(), key=lambda kv: kv[1].address)), indirect=indirect)


# Current-sensing models (XL330, XM430) have a current limit, a goal current and present current at
# 126; the XL430 has no current sensor and reports Present_Load (x 0.1 %) at 126 instead.
_CURRENT = {
    "Current_Limit": Register(38, 2, RW),
    "Goal_Current": Register(102, 2, RW, signed=True),
    "Present_Current": Register(126, 2, R, signed=True),
}

# Indirect blocks per the e-manual tables: XL330 has 20 items (data from 208), XL430 28 (data from
# 224), XM430 28 more at 578/634.
_XL330_INDIRECT = ((168, 208, 20),)
_XL430_INDIRECT = ((168, 224, 28),)
_XM430_INDIRECT = ((168, 224, 28), (578, 634, 28))

MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        _model("xl330-m077", 1190, {
            "Temperature_Limit": Register(31, 1, RW, default=70),
            "Max_Voltage_Limit": Register(32, 2, RW, default=70),
            "Min_Voltage_Limit": Register(34, 2, RW, default=35),
            "Baud_Rate": Register(8, 1, RW, default=1, valid=(0, 6)),
            "Current_Limit": Register(38, 2, RW, default=1750, valid=(0, 1750)),
            "Velocity_Limit": Register(44, 4, RW, default=1620),
        }, {**_CURRENT, "Startup_Configuration": Register(60, 1, RW), "PWM_Slope": Register(62, 1, RW, default=140)},
            _XL330_INDIRECT),
        _model("xl330-m288", 1200, {
            "Temperature_Limit": Register(31, 1, RW, default=70),
            "Max_Voltage_Limit": Register(32, 2, RW, default=70),
            "Min_Voltage_Limit": Register(34, 2, RW, default=35),
            "Baud_Rate": Register(8, 1, RW, default=1, valid=(0, 6)),
            "Current_Limit": Register(38, 2, RW, default=1750, valid=(0, 1750)),
            "Velocity_Limit": Register(44, 4, RW, default=445),
        }, {**_CURRENT, "Startup_Configuration": Register(60, 1, RW), "PWM_Slope": Register(62, 1, RW, default=140)},
            _XL330_INDIRECT),
        _model("xl430-w250", 1060, {
            "Temperature_Limit": Register(31, 1, RW, default=72),
            "Max_Voltage_Limit": Register(32, 2, RW, default=140),
            "Min_Voltage_Limit": Register(34, 2, RW, default=60),
            "Velocity_Limit": Register(44, 4, RW, default=265),
            "Operating_Mode": Register(11, 1, RW, default=3, valid=frozenset({1, 3, 4, 16})),  # no current sensor
        }, {"Present_Load": Register(126, 2, R, signed=True)}, _XL430_INDIRECT),
        _model("xm430-w350", 1020, {
            "Temperature_Limit": Register(31, 1, RW, default=80),
            "Max_Voltage_Limit": Register(32, 2, RW, default=160),
            "Min_Voltage_Limit": Register(34, 2, RW, default=95),
            "Current_Limit": Register(38, 2, RW, default=1193, valid=(0, 1193)),
            "Velocity_Limit": Register(44, 4, RW, default=200),
        }, {**_CURRENT, "Acceleration_Limit": Register(40, 4, RW, default=32767)}, _XM430_INDIRECT),
        _model("xm430-w210", 1030, {
            "Temperature_Limit": Register(31, 1, RW, default=80),
            "Max_Voltage_Limit": Register(32, 2, RW, default=160),
            "Min_Voltage_Limit": Register(34, 2, RW, default=95),
            "Current_Limit": Register(38, 2, RW, default=1193, valid=(0, 1193)),
            "Velocity_Limit": Register(44, 4, RW, default=330),
        }, {**_CURRENT, "Acceleration_Limit": Register(40, 4, RW, default=32767)}, _XM430_INDIRECT),
    )
}

BY_NUMBER: dict[int, Model] = {m.number: m for m in MODELS.values()}

# Baud_Rate register value -> bits per second.
BAUD_RATES = {0: 9600, 1: 57600, 2: 115200, 3: 1_000_000, 4: 2_000_000, 5: 3_000_000, 6: 4_000_000}
