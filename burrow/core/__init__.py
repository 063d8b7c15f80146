"""Pure queue semantics: values, validation and time arithmetic. No I/O, no clock reads."""
