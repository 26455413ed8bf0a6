// kitty-coreml-worker: loads Apple's StableDiffusion pipeline once and serves the worker protocol
// (docs/protocol.md) on stdin/stdout; stderr carries logs. The main thread reads stdin and answers
// hello, cancel and bad lines at once; the other requests run one at a time on a serial queue. Progress
// goes out from the pipeline's progress handler, which stops a cancelled run by returning false.

import CoreGraphics
import CoreML
import Foundation
import ImageIO
import StableDiffusion
import UniformTypeIdentifiers

let workerVersion = "0.1.0"
let mlStableDiffusionCommit = "e12202c1f6405b83918b58a5d097cd61e3e1f702"
let computeUnitNames = ["all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"]
let schedulerNames = ["pndm", "dpmpp"]
let familyNames = ["sd", "sdxl", "sd3"]

final class Job {
    let id: String
    let type: String
    let message: Message
    var stopped = false  // guarded by Worker.lock
    var started = false  // the requests queue has begun it (guarded by Worker.lock)

    init(id: String, type: String, message: Message) {
        self.id = id
        self.type = type
        self.message = message
    }
}

struct LoadKey: Equatable {
    let modelPath: String, computeUnits: String, family: String, reduceMemory: Bool, safety: Bool
}

struct LoadedModel {
    let key: LoadKey
    let pipeline: any StableDiffusionPipelineProtocol
    let width: Int, height: Int, hasEncoder: Bool
    let unetBatch: Int?  // the Unet's `sample` batch (SD and SDXL); nil for SD3's transformer
    let reply: Message
}

func device(_ computeUnits: String) -> String {
    computeUnits == "cpuOnly" ? "cpu" : "ane"
}

func isFolder(_ path: String) -> Bool {
    var isDirectory: ObjCBool = false
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
}

func elapsed(since start: Date) -> Double {
    (Date().timeIntervalSince(start) * 10_000).rounded() / 10_000
}

/// Writes one line to stderr with C stdio: FileHandle.write raises an Objective-C exception, which Swift
/// cannot catch, on EPIPE once SIGPIPE is ignored; fputs just returns EOF.
func logLine(_ text: String) {
    fputs("kitty-coreml-worker: \(text)\n", stderr)
}

/// Leaves the process as the Python worker does (os._exit): C stdio flushed so the library's last prints
/// reach the stderr tail, but no atexit handlers or static destructors running while the requests queue
/// may still be inside Core ML.
func finish(_ status: Int32) -> Never {
    fflush(nil)
    _exit(status)
}

/// Checks a resource folder before the library sees it (it traps instead of throwing on a missing
/// vocab.json or on resources of another family) and reads the native size and the Unet's batch from
/// the denoiser's metadata.json, as kitty_coreml/resources.py does.
func inspectResources(_ folder: String, family: String) throws -> (width: Int, height: Int, hasEncoder: Bool, unetBatch: Int?) {
    func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }
    func has(_ name: String) -> Bool { FileManager.default.fileExists(atPath: path(name)) }
    let unet = has("UnetChunk1.mlmodelc") && has("UnetChunk2.mlmodelc") ? "UnetChunk1.mlmodelc" : "Unet.mlmodelc"
    let denoiser = family == "sd3" ? "MultiModalDiffusionTransformer.mlmodelc" : unet
    let textEncoders = ["sd": ["TextEncoder.mlmodelc"], "sdxl": ["TextEncoder2.mlmodelc"],
                        "sd3": ["TextEncoder.mlmodelc", "TextEncoder2.mlmodelc"]][family] ?? []
    let missing = ([denoiser, "VAEDecoder.mlmodelc", "vocab.json", "merges.txt"] + textEncoders).filter { !has($0) }
    guard missing.isEmpty else {
        throw RequestFailed("load_failed", "\(folder) is not a Core ML \(family) resource folder: missing \(missing.joined(separator: ", "))")
    }
    let metadataPath = path(denoiser + "/metadata.json")
    guard let data = FileManager.default.contents(atPath: metadataPath),
          let parsed = try? JSONSerialization.jsonObject(with: data) else {
        throw RequestFailed("load_failed", "cannot read \(metadataPath)")
    }
    let description = (parsed as? [[String: Any]])?.first ?? (parsed as? [String: Any])
    let inputs = (description?["inputSchema"] as? [[String: Any]]) ?? []
    var shapes: [String: [Int]] = [:]
    for input in inputs {
        guard let name = input["name"] as? String, let shape = input["shape"] as? String else { continue }
        shapes[name] = shape.split(whereSeparator: { !($0.isASCII && $0.isNumber) }).compactMap { Int($0) }
    }
    var detected = "sd"
    if has("MultiModalDiffusionTransformer.mlmodelc") {
        detected = "sd3"
    } else if has("TextEncoder2.mlmodelc") || (shapes["time_ids"] != nil && shapes["text_embeds"] != nil) {
        detected = "sdxl"
    }
    guard detected == family else {
        throw RequestFailed("load_failed", "\(folder) holds an \(detected) model, not \(family); load it with family \(detected)")
    }
    let latent = family == "sd3" ? "latent_image_embeddings" : "sample"
    guard let shape = shapes[latent], shape.count == 4, shape[2] > 0, shape[3] > 0 else {
        throw RequestFailed("load_failed", "cannot read the native size: \(metadataPath) has no 4-dimensional `\(latent)` input")
    }
    let unetBatch: Int? = family == "sd3" ? nil : shape[0]
    return (shape[3] * 8, shape[2] * 8, has("VAEEncoder.mlmodelc"), unetBatch)
}

/// An input image as Apple's CLI sees it: NSImage(data:) applies the EXIF orientation, CGImageSource
/// does not, so a rotated photo is redrawn upright (a thumbnail with the transform, at full size).
func uprightImage(_ path: String) -> CGImage? {
    guard let source = CGImageSourceCreateWithURL(URL(filePath: path) as CFURL, nil) else { return nil }
    let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any] ?? [:]
    let orientation = (properties[kCGImagePropertyOrientation] as? NSNumber)?.intValue ?? 1
    guard orientation != 1 else { return CGImageSourceCreateImageAtIndex(source, 0, nil) }
    let width = (properties[kCGImagePropertyPixelWidth] as? NSNumber)?.intValue ?? 0
    let height = (properties[kCGImagePropertyPixelHeight] as? NSNumber)?.intValue ?? 0
    let options: [CFString: Any] = [kCGImageSourceCreateThumbnailFromImageAlways: true,
                                    kCGImageSourceCreateThumbnailWithTransform: true,
                                    kCGImageSourceThumbnailMaxPixelSize: max(width, height)]
    return CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary)
}

func makePipeline(_ folder: URL, family: String, configuration: MLModelConfiguration, reduceMemory: Bool,
                  safety: Bool) throws -> any StableDiffusionPipelineProtocol {
    do {
        switch family {
        case "sdxl":
            if #available(macOS 14.0, *) {
                return try StableDiffusionXLPipeline(resourcesAt: folder, configuration: configuration, reduceMemory: reduceMemory)
            }
        case "sd3":
            if #available(macOS 14.0, *) {
                return try StableDiffusion3Pipeline(resourcesAt: folder, configuration: configuration, reduceMemory: reduceMemory)
            }
        default:
            return try StableDiffusionPipeline(resourcesAt: folder, controlNet: [], configuration: configuration,
                                               disableSafety: !safety, reduceMemory: reduceMemory,
                                               useMultilingualTextEncoder: false, script: nil)
        }
    } catch {
        throw RequestFailed("load_failed", "cannot create the \(family) pipeline from \(folder.path): \(error)")
    }
    throw RequestFailed("load_failed", "family: \(family) needs macOS 14 or later; this Mac runs "
                        + ProcessInfo.processInfo.operatingSystemVersionString)
}

func writePNG(_ image: CGImage, to path: String) throws {
    guard let destination = CGImageDestinationCreateWithURL(URL(filePath: path) as CFURL,
                                                            UTType.png.identifier as CFString, 1, nil) else {
        throw RequestFailed("generation_failed", "cannot create \(path)")
    }
    CGImageDestinationAddImage(destination, image, nil)
    guard CGImageDestinationFinalize(destination) else {
        throw RequestFailed("generation_failed", "cannot write the PNG \(path)")
    }
}

final class Worker {
    let writer: LineWriter
    let requests = DispatchQueue(label: "kitty-coreml-worker.requests", qos: .userInitiated)
    let lock = NSLock()
    var pendingGenerate: Job?  // queued or running; other requests are busy meanwhile (guarded by lock)
    var inputEnded = false  // stdin ended: the orchestrator is gone, nothing more is written (guarded by lock)
    var loaded: LoadedModel?  // touched on the requests queue only

    init(writer: LineWriter) {
        self.writer = writer
    }

    func isStopped(_ job: Job) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return job.stopped
    }

    /// Sends a progress event unless the generate was stopped (cancel, shutdown, end of stdin): checked
    /// under the lock that end of stdin sets its flag under, so nothing is written after it.
    func sendProgress(_ job: Job, _ message: Message) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if job.stopped { return false }
        writer.send(message)
        return true
    }

    func serve() -> Never {
        var lineNumber = 0
        readLines(onLine: { line in
            lineNumber += 1
            guard line.contains(where: { ![0x20, 0x09, 0x0D].contains($0) }) else { return }
            autoreleasepool {
                do {
                    let request = try decode(line)
                    dispatch(request.message, id: request.id, type: request.type)
                } catch {
                    let failed = error as? RequestFailed ?? RequestFailed("internal", "\(error)")
                    writer.send(errorReply(failed.id, failed.code, "line \(lineNumber): \(failed.message)"))
                }
            }
        }, onTooLong: {
            lineNumber += 1
            writer.send(errorReply(nil, "malformed", "line \(lineNumber) is longer than \(maxLineBytes) bytes"))
        })
        lock.lock()
        inputEnded = true
        let running = pendingGenerate?.started == true
        pendingGenerate?.stopped = true
        lock.unlock()
        // a running generate stops after its step; anything else (a first load on the Neural Engine takes
        // minutes) is not waited for: nobody is left to answer
        if running { requests.sync {} }
        finish(0)
    }

    func dispatch(_ message: Message, id: String, type: String) {
        guard requestTypes.contains(type) else {
            writer.send(errorReply(id, "unknown_type", "type: got \(describe(type)); allowed: \(requestTypes.joined(separator: ", "))"))
            return
        }
        if type == "hello" { return writer.send(hello(message, id: id)) }
        lock.lock()
        defer { lock.unlock() }
        let running = pendingGenerate
        switch type {
        case "cancel":
            let target = message["target"] as? String
            if let value = message["target"], !(value is NSNull), target == nil {
                return writer.send(errorReply(id, "bad_request", "target: got \(describe(value)); allowed: a string"))
            }
            let active = running != nil && (target == nil || target == running?.id)
            if active { running?.stopped = true }
            return writer.send(["type": "ack", "id": id, "active": active])
        case "shutdown":
            running?.stopped = true
        default:
            if let running {
                return writer.send(errorReply(id, "busy", "generate \(describe(running.id)) is running; only cancel and hello are answered meanwhile"))
            }
        }
        let job = Job(id: id, type: type, message: message)
        if type == "generate" { pendingGenerate = job }
        requests.async { self.run(job) }
    }

    func hello(_ message: Message, id: String) -> Message {
        let asked: Int
        do {
            asked = try Fields(message: message).integer("protocol_version", in: 1...Int(Int32.max))
        } catch {
            let failed = error as? RequestFailed ?? RequestFailed("internal", "\(error)")
            return errorReply(id, failed.code, failed.message)
        }
        guard asked == protocolVersion else {
            return errorReply(id, "unsupported_version", "protocol_version: got \(asked); allowed: \(protocolVersion)")
        }
        var families = ["sd"]
        if #available(macOS 14.0, *) { families += ["sdxl", "sd3"] }
        return ["type": "hello", "id": id, "protocol_version": protocolVersion, "engine": "coreml",
                "engine_version": "kitty-coreml-worker \(workerVersion); ml-stable-diffusion \(mlStableDiffusionCommit.prefix(12))",
                "device": device("all"), "families": families, "sizes": ["native"], "compute_units": computeUnitNames,
                "schedulers": schedulerNames, "features": ["img2img", "cancel", "safety", "reduce_memory"],
                "pid": Int(getpid())]
    }

    /// One queued request, on the requests queue.
    func run(_ job: Job) {
        if job.type == "shutdown" {
            writer.send(["type": "bye", "id": job.id])
            finish(0)
        }
        lock.lock()
        job.started = true
        lock.unlock()
        // the library's Objective-C temporaries (images, multi-arrays) are freed per request, not at exit
        let reply: Message = autoreleasepool { () -> Message in
            do {
                switch job.type {
                case "load": return try load(job)
                case "generate": return try generate(job)
                case "unload":
                    unload()
                    return ["type": "unloaded", "id": job.id]
                default: throw RequestFailed("internal", "no handler for \(job.type)")
                }
            } catch {
                let failed = error as? RequestFailed ?? RequestFailed("internal", "\(error)")
                return errorReply(job.id, failed.code, failed.message)
            }
        }
        lock.lock()
        if pendingGenerate === job { pendingGenerate = nil }
        let silent = inputEnded
        lock.unlock()
        if !silent { writer.send(reply) }
    }

    func load(_ job: Job) throws -> Message {
        let fields = Fields(message: job.message)
        let key = LoadKey(modelPath: try fields.string("model_path"),
                          computeUnits: try fields.string("compute_units", allowed: computeUnitNames),
                          family: try fields.string("family", default: "sd", allowed: familyNames),
                          reduceMemory: try fields.bool("reduce_memory", default: false),
                          safety: try fields.bool("safety", default: false))
        if let loaded, loaded.key == key {
            return loaded.reply.merging(["id": job.id, "seconds": 0.0]) { _, new in new }
        }
        unload()
        let path = key.modelPath
        guard path.hasPrefix("/") else {
            throw RequestFailed("bad_request", "model_path: got \(describe(path)); allowed: an absolute path")
        }
        guard isFolder(path) else { throw RequestFailed("load_failed", "model_path: \(path) does not exist or is not a folder") }
        let resources = try inspectResources(path, family: key.family)
        let configuration = MLModelConfiguration()
        let units: [String: MLComputeUnits] = ["cpuOnly": .cpuOnly, "cpuAndGPU": .cpuAndGPU,
                                               "cpuAndNeuralEngine": .cpuAndNeuralEngine, "all": .all]
        configuration.computeUnits = units[key.computeUnits] ?? .all
        let started = Date()
        let pipeline = try makePipeline(URL(filePath: path, directoryHint: .isDirectory), family: key.family,
                                        configuration: configuration, reduceMemory: key.reduceMemory, safety: key.safety)
        do {
            try pipeline.loadResources()
        } catch {
            pipeline.unloadResources()
            throw RequestFailed("load_failed", "cannot load \(path): \(error)")
        }
        // SD3 has a VAE encoder but no img2img: its flow scheduler leaves alphasCumProd empty
        let img2img = resources.hasEncoder && key.family != "sd3"
        let reply: Message = ["type": "loaded", "id": job.id, "model_path": path, "compute_units": key.computeUnits,
                              "device": device(key.computeUnits), "family": key.family, "width": resources.width,
                              "height": resources.height, "has_encoder": img2img,
                              "has_safety": pipeline.canSafetyCheck, "seconds": elapsed(since: started)]
        loaded = LoadedModel(key: key, pipeline: pipeline, width: resources.width, height: resources.height,
                             hasEncoder: img2img, unetBatch: resources.unetBatch, reply: reply)
        return reply
    }

    func unload() {
        loaded?.pipeline.unloadResources()
        loaded = nil
    }

    func generate(_ job: Job) throws -> Message {
        let fields = Fields(message: job.message)
        let prompt = try fields.string("prompt")
        guard !prompt.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw RequestFailed("bad_request", "prompt: got \(describe(prompt)); allowed: non-empty text")
        }
        var configuration = StableDiffusionPipeline.Configuration(prompt: prompt)
        configuration.negativePrompt = try fields.string("negative_prompt", default: "")
        configuration.imageCount = try fields.integer("count", in: 1...8)
        configuration.stepCount = try fields.integer("steps", in: 1...150)
        configuration.guidanceScale = Float(try fields.number("guidance", in: 0...30))
        let scheduler = try fields.string("scheduler", allowed: schedulerNames)
        configuration.schedulerType = scheduler == "dpmpp" ? .dpmSolverMultistepScheduler : .pndmScheduler
        let seed = try fields.integer("seed", in: 0...Int(UInt32.max))
        configuration.seed = UInt32(seed)
        let inputImage = try fields.optionalString("input_image")
        configuration.strength = Float(try fields.number("strength", in: 0...1, default: 0.5))
        let outputDir = try fields.string("output_dir")
        guard outputDir.hasPrefix("/"), isFolder(outputDir) else {
            throw RequestFailed("bad_request", "output_dir: got \(describe(outputDir)); allowed: an existing folder, as an absolute path")
        }
        guard let model = loaded else { throw RequestFailed("not_loaded", "no model is loaded; send load first") }
        let (family, steps) = (model.key.family, configuration.stepCount)
        // the library traps here instead of throwing: PNDM and SD3's flow scheduler need two steps
        if steps < 2 && (scheduler == "pndm" || family == "sd3") {
            throw RequestFailed("unsupported", "steps: got 1; the \(family == "sd3" ? "sd3" : "pndm") scheduler needs at least 2")
        }
        // guidance below 1 makes StableDiffusionPipeline send one latent, not the pair a batch-2 Unet takes
        if family == "sd", configuration.guidanceScale < 1, let batch = model.unetBatch, batch >= 2 {
            throw RequestFailed("unsupported", "guidance: got \(configuration.guidanceScale); allowed: 1..30 for \(model.key.modelPath), whose Unet takes batch \(batch) (guidance below 1 sends batch 1)")
        }
        if let inputImage {
            // StableDiffusion3Pipeline's img2img calls addNoise, which indexes the flow scheduler's empty alphasCumProd
            guard family != "sd3" else {
                throw RequestFailed("unsupported", "input_image: sd3 models cannot start from an image (the library's flow scheduler has no img2img)")
            }
            guard model.hasEncoder else {
                throw RequestFailed("unsupported", "input_image: \(model.key.modelPath) has no VAEEncoder.mlmodelc for img2img")
            }
            guard let image = uprightImage(inputImage) else {
                throw RequestFailed("bad_request", "input_image: cannot read \(inputImage) as a PNG or JPEG image")
            }
            guard image.width == model.width, image.height == model.height else {
                throw RequestFailed("bad_request", "input_image: \(inputImage) is \(image.width)x\(image.height); allowed: the model's native \(model.width)x\(model.height)")
            }
            // img2img runs int(steps x strength) steps; with none the scheduler indexes past its end
            if configuration.strength < 1 && Int(Float(steps) * configuration.strength) < 1 {
                throw RequestFailed("bad_request", "strength: got \(configuration.strength) with steps \(steps); allowed: steps x strength of at least 1")
            }
            configuration.startingImage = image
        }
        // the rest as Apple's StableDiffusionSample sets it
        let (scale, shift, timestepShift): (Float32, Float32, Float) =
            family == "sdxl" ? (0.13025, 0, 1) : family == "sd3" ? (1.5305, 0.0609, 3) : (0.18215, 0, 1)
        configuration.encoderScaleFactor = scale
        configuration.decoderScaleFactor = scale
        configuration.decoderShiftFactor = shift
        configuration.schedulerTimestepShift = timestepShift
        configuration.rngType = .numpyRNG
        configuration.disableSafety = !model.key.safety
        configuration.useDenoisedIntermediates = true

        if isStopped(job) { throw RequestFailed("cancelled", "cancelled before the first step") }
        let started = Date()
        let images: [CGImage?]
        do {
            images = try model.pipeline.generateImages(configuration: configuration) { progress in
                sendProgress(job, ["type": "progress", "id": job.id, "step": progress.step + 1, "total": progress.stepCount])
            }
        } catch {
            throw RequestFailed("generation_failed", "\(error)")
        }
        if images.isEmpty && isStopped(job) {
            // a stopped run returns before the library's own reduceMemory unload of the denoiser; everything
            // reloads lazily (ManagedMLModel.perform), so unloading all of it leaves what a finished run leaves
            if model.key.reduceMemory { model.pipeline.unloadResources() }
            throw RequestFailed("cancelled", "cancelled after a step, as asked")
        }
        guard images.count == configuration.imageCount else {
            throw RequestFailed("generation_failed", "the pipeline returned \(images.count) images for count \(configuration.imageCount)")
        }
        var paths: [Any] = []
        for (index, image) in images.enumerated() {
            guard let image else {  // the safety checker removed it
                paths.append(NSNull())
                continue
            }
            let finalPath = (outputDir as NSString).appendingPathComponent("image_\(index).png")
            let partialPath = (outputDir as NSString).appendingPathComponent(".image_\(index).png.partial")
            try writePNG(image, to: partialPath)
            guard rename(partialPath, finalPath) == 0 else {
                throw RequestFailed("generation_failed", "cannot rename \(partialPath): \(String(cString: strerror(errno)))")
            }
            paths.append(finalPath)
        }
        let first = images.compactMap { $0 }.first
        return ["type": "result", "id": job.id, "images": paths, "seed": seed, "width": first?.width ?? model.width,
                "height": first?.height ?? model.height, "seconds": elapsed(since: started)]
    }
}

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments == ["--version"] {
    print("kitty-coreml-worker \(workerVersion) (ml-stable-diffusion \(mlStableDiffusionCommit))")
    finish(0)
} else if !arguments.isEmpty {
    fputs("usage: kitty-coreml-worker [--version]\nSpeaks the worker protocol (docs/protocol.md) in JSON lines on stdin/stdout.\n", stderr)
    finish(arguments == ["--help"] || arguments == ["-h"] ? 0 : 64)
}
signal(SIGPIPE, SIG_IGN)
// fd 1 carries protocol lines only: keep a private copy of it and point fd 1 at stderr, so whatever the
// library prints (it does print on some load failures) cannot corrupt the protocol
let protocolDescriptor = dup(STDOUT_FILENO)
guard protocolDescriptor >= 0, dup2(STDERR_FILENO, STDOUT_FILENO) >= 0 else {
    logLine("cannot set up stdout: \(String(cString: strerror(errno)))")
    finish(70)
}
// C stdio chose block buffering for stdout when it was a pipe; now that fd 1 is stderr, the library's
// prints ("Needed to truncate input ...", SDXL/SD3 load errors) must go out a line at a time, or a trap
// loses them from the stderr tail the orchestrator quotes
setvbuf(stdout, nil, _IOLBF, 0)
Worker(writer: LineWriter(descriptor: protocolDescriptor)).serve()
