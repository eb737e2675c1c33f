//! COCO-80 class names, in the 0-based order the detectors emit.

pub const CLASSES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

pub const PERSON: u16 = 0;
pub const SPORTS_BALL: u16 = 32;

pub fn class_id(name: &str) -> Option<u16> {
    CLASSES.iter().position(|&c| c == name).map(|i| i as u16)
}

pub fn class_name(id: u16) -> &'static str {
    CLASSES.get(id as usize).copied().unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids() {
        assert_eq!(super::class_id("person"), Some(super::PERSON));
        assert_eq!(super::class_id("sports ball"), Some(super::SPORTS_BALL));
        assert_eq!(super::class_name(79), "toothbrush");
        assert_eq!(super::class_id("referee"), None);
    }
}
