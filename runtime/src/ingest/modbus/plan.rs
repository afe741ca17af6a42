//! The read plan of a device: which requests one poll sends.
//!
//! Points of the same kind (coils, discrete inputs, holding or input registers) whose
//! addresses touch, overlap or are at most `max_gap_registers` / `max_gap_bits` apart are read
//! with one request, as long as that request stays within `max_registers_per_read` (at most
//! 125) or `max_bits_per_read` (at most 2000). Registers in a bridged gap are read and ignored;
//! a device that refuses to read unmapped addresses needs a gap of 0 (the default).

use super::config::{DeviceConfig, PointConfig, RegisterKind};

/// One request of a poll and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadGroup {
    /// The table read.
    pub kind: RegisterKind,
    /// First address read.
    pub start: u16,
    /// Number of registers or bits read.
    pub count: u16,
    /// Indexes into the device's `points`, in address order.
    pub points: Vec<usize>,
}

impl ReadGroup {
    /// Label for logs and errors: `holding 100..104`.
    pub fn label(&self) -> String {
        format!(
            "{} {}..{}",
            self.kind.label(),
            self.start,
            u32::from(self.start) + u32::from(self.count)
        )
    }
}

/// Groups `points` into requests. The result is ordered by kind, then address.
pub fn plan(
    points: &[PointConfig],
    max_gap_registers: u16,
    max_gap_bits: u16,
    max_registers_per_read: u16,
    max_bits_per_read: u16,
) -> Vec<ReadGroup> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].kind, points[i].address, points[i].width()));
    let mut groups: Vec<ReadGroup> = Vec::new();
    // The open group and its end (exclusive), as u32 so address 65535 + width cannot wrap.
    let mut open: Option<(ReadGroup, u32)> = None;
    for i in order {
        let point = &points[i];
        let (gap, max) = if point.kind.is_bit() {
            (max_gap_bits, max_bits_per_read)
        } else {
            (max_gap_registers, max_registers_per_read)
        };
        let start = u32::from(point.address);
        let end = start + u32::from(point.width());
        if let Some((group, group_end)) = open.as_mut() {
            let same_kind = group.kind == point.kind;
            let close_enough = start <= *group_end + u32::from(gap);
            let new_end = (*group_end).max(end);
            let fits = new_end - u32::from(group.start) <= u32::from(max);
            if same_kind && close_enough && fits {
                *group_end = new_end;
                group.count = (new_end - u32::from(group.start)) as u16;
                group.points.push(i);
                continue;
            }
        }
        if let Some((group, _)) = open.take() {
            groups.push(group);
        }
        open = Some((
            ReadGroup {
                kind: point.kind,
                start: point.address,
                count: (end - start) as u16,
                points: vec![i],
            },
            end,
        ));
    }
    if let Some((group, _)) = open {
        groups.push(group);
    }
    groups
}

/// The plan of a validated device.
pub fn plan_device(device: &DeviceConfig) -> Vec<ReadGroup> {
    plan(
        &device.points,
        device.max_gap_registers,
        device.max_gap_bits,
        device.max_registers_per_read,
        device.max_bits_per_read,
    )
}

#[cfg(test)]
mod tests {
    use super::super::config::ValueType;
    use super::*;

    fn p(kind: RegisterKind, address: u16, value_type: ValueType) -> PointConfig {
        PointConfig::new("x", kind, address, value_type)
    }

    fn spans(groups: &[ReadGroup]) -> Vec<(RegisterKind, u16, u16)> {
        groups.iter().map(|g| (g.kind, g.start, g.count)).collect()
    }

    #[test]
    fn adjacent_registers_of_one_kind_become_one_read() {
        let points = vec![
            p(RegisterKind::Holding, 4, ValueType::F32),
            p(RegisterKind::Holding, 0, ValueType::U32),
            p(RegisterKind::Holding, 2, ValueType::U16),
            p(RegisterKind::Holding, 3, ValueType::I16),
            p(RegisterKind::Holding, 6, ValueType::F64),
        ];
        let groups = plan(&points, 0, 0, 125, 2000);
        assert_eq!(spans(&groups), vec![(RegisterKind::Holding, 0, 10)]);
        assert_eq!(groups[0].points, vec![1, 2, 3, 0, 4]);
    }

    #[test]
    fn different_kinds_are_never_merged() {
        let points = vec![
            p(RegisterKind::Holding, 0, ValueType::U16),
            p(RegisterKind::Input, 1, ValueType::U16),
            p(RegisterKind::Coil, 0, ValueType::Bool),
            p(RegisterKind::DiscreteInput, 1, ValueType::Bool),
        ];
        let groups = plan(&points, 10, 10, 125, 2000);
        assert_eq!(
            spans(&groups),
            vec![
                (RegisterKind::Coil, 0, 1),
                (RegisterKind::DiscreteInput, 1, 1),
                (RegisterKind::Holding, 0, 1),
                (RegisterKind::Input, 1, 1),
            ]
        );
    }

    #[test]
    fn a_gap_is_bridged_only_up_to_max_gap() {
        let points = vec![
            p(RegisterKind::Input, 0, ValueType::U16),
            p(RegisterKind::Input, 3, ValueType::U16), // 2 unused registers before it
            p(RegisterKind::Input, 7, ValueType::U16), // 3 unused registers before it
        ];
        assert_eq!(
            spans(&plan(&points, 0, 0, 125, 2000)),
            vec![
                (RegisterKind::Input, 0, 1),
                (RegisterKind::Input, 3, 1),
                (RegisterKind::Input, 7, 1)
            ]
        );
        assert_eq!(
            spans(&plan(&points, 2, 0, 125, 2000)),
            vec![(RegisterKind::Input, 0, 4), (RegisterKind::Input, 7, 1)]
        );
        assert_eq!(
            spans(&plan(&points, 3, 0, 125, 2000)),
            vec![(RegisterKind::Input, 0, 8)]
        );
    }

    #[test]
    fn reads_are_split_at_125_registers_and_2000_bits() {
        let registers: Vec<PointConfig> = (0..130)
            .map(|a| p(RegisterKind::Holding, a * 2, ValueType::U32))
            .collect();
        let groups = plan(&registers, 0, 0, 125, 2000);
        // 62 two-register values fit in 124 registers; the 63rd would make 126.
        assert_eq!(
            spans(&groups),
            vec![
                (RegisterKind::Holding, 0, 124),
                (RegisterKind::Holding, 124, 124),
                (RegisterKind::Holding, 248, 12)
            ]
        );
        assert!(groups.iter().all(|g| g.count <= 125));
        let bits: Vec<PointConfig> = (0..4500)
            .map(|a| p(RegisterKind::Coil, a, ValueType::Bool))
            .collect();
        assert_eq!(
            spans(&plan(&bits, 0, 0, 125, 2000)),
            vec![
                (RegisterKind::Coil, 0, 2000),
                (RegisterKind::Coil, 2000, 2000),
                (RegisterKind::Coil, 4000, 500)
            ]
        );
    }

    #[test]
    fn overlapping_points_share_one_read() {
        let mut bit = p(RegisterKind::Holding, 1, ValueType::Bool);
        bit.bit = Some(3);
        let points = vec![p(RegisterKind::Holding, 0, ValueType::U32), bit];
        assert_eq!(
            spans(&plan(&points, 0, 0, 125, 2000)),
            vec![(RegisterKind::Holding, 0, 2)]
        );
    }

    #[test]
    fn the_last_address_does_not_wrap() {
        let points = vec![
            p(RegisterKind::Input, 65534, ValueType::U16),
            p(RegisterKind::Input, 65535, ValueType::U16),
        ];
        assert_eq!(
            spans(&plan(&points, 0, 0, 125, 2000)),
            vec![(RegisterKind::Input, 65534, 2)]
        );
    }

    #[test]
    fn a_smaller_read_limit_splits_earlier() {
        let points: Vec<PointConfig> = (0..10)
            .map(|a| p(RegisterKind::Input, a, ValueType::U16))
            .collect();
        assert_eq!(
            spans(&plan(&points, 0, 0, 4, 2000)),
            vec![
                (RegisterKind::Input, 0, 4),
                (RegisterKind::Input, 4, 4),
                (RegisterKind::Input, 8, 2)
            ]
        );
    }
}
