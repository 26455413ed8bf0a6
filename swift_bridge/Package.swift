// swift-tools-version: 5.8
// kitty-coreml-worker: the worker protocol (docs/protocol.md) on Apple's StableDiffusion library.

import PackageDescription

let package = Package(
    name: "kitty-coreml-worker",
    platforms: [
        .macOS("13.1"),
    ],
    products: [
        .executable(name: "kitty-coreml-worker", targets: ["kitty-coreml-worker"]),
    ],
    dependencies: [
        // Pinned: the same commit kitty-coreml builds StableDiffusionSample from (CONTRACTS.md section 1).
        .package(url: "https://github.com/apple/ml-stable-diffusion",
                 revision: "e12202c1f6405b83918b58a5d097cd61e3e1f702"),
    ],
    targets: [
        .executableTarget(
            name: "kitty-coreml-worker",
            dependencies: [
                .product(name: "StableDiffusion", package: "ml-stable-diffusion"),
            ]
        ),
    ]
)
