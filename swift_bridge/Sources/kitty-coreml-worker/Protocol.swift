// The wire side of the worker protocol (docs/protocol.md): reading lines, decoding them, checked field
// access and writing whole lines. Nothing here knows about Stable Diffusion.

import Foundation

let protocolVersion = 1
let maxLineBytes = 1 << 20
let requestTypes = ["hello", "load", "generate", "cancel", "unload", "shutdown"]

typealias Message = [String: Any]

/// Ends a request (or a bad line) with an `error` reply of this code; `id` is set for bad lines only.
struct RequestFailed: Error {
    let code: String
    let message: String
    var id: String? = nil

    init(_ code: String, _ message: String, id: String? = nil) {
        self.code = code
        self.message = message
        self.id = id
    }
}

func errorReply(_ id: String?, _ code: String, _ message: String) -> Message {
    let words = message.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    return ["type": "error", "id": id.map { $0 as Any } ?? NSNull(), "code": code,
            "message": words.isEmpty ? "(no message)" : words]
}

func isBool(_ value: Any) -> Bool {
    guard let number = value as? NSNumber else { return false }
    return CFGetTypeID(number) == CFBooleanGetTypeID()
}

/// A JSON value as it appeared on the wire, shortened, for error messages.
func describe(_ value: Any?) -> String {
    guard let value else { return "nothing" }
    guard JSONSerialization.isValidJSONObject([value]),
          let data = try? JSONSerialization.data(withJSONObject: [value], options: [.withoutEscapingSlashes]),
          let text = String(data: data, encoding: .utf8) else { return String(describing: value) }
    let inner = String(text.dropFirst().dropLast())
    return inner.count > 80 ? String(inner.prefix(77)) + "..." : inner
}

/// Parses one line into a message with a string id (1..200 characters) and a string type.
func decode(_ line: Data) throws -> (message: Message, id: String, type: String) {
    let parsed: Any
    do {
        parsed = try JSONSerialization.jsonObject(with: line, options: [.fragmentsAllowed])
    } catch {
        let reason = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? error.localizedDescription
        throw RequestFailed("malformed", "not JSON (or not UTF-8): \(reason)")
    }
    guard let message = parsed as? [String: Any] else {
        throw RequestFailed("malformed", "JSON \(describe(parsed)) is not an object")
    }
    guard let id = message["id"] as? String, (1...200).contains(id.unicodeScalars.count) else {
        throw RequestFailed("malformed", "id: got \(describe(message["id"])); allowed: a string of 1..200 characters")
    }
    guard let type = message["type"] as? String else {
        throw RequestFailed("malformed", "type: got \(describe(message["type"])); allowed: a string", id: id)
    }
    return (message, id, type)
}

/// Checked access to a request's fields: every failure is a `bad_request` naming the field and the value.
/// A null counts as absent where the field has a default.
struct Fields {
    let message: Message

    private func refuse(_ name: String, _ allowed: String) -> RequestFailed {
        RequestFailed("bad_request", "\(name): got \(describe(message[name])); allowed: \(allowed)")
    }

    /// The field's value; nil when it is absent or null and has a default.
    private func raw(_ name: String, hasDefault: Bool) throws -> Any? {
        if let value = message[name], !(value is NSNull) { return value }
        if hasDefault { return nil }
        throw message[name] == nil ? RequestFailed("bad_request", "\(name): missing; required") : refuse(name, "not null")
    }

    func string(_ name: String, default fallback: String? = nil, allowed: [String]? = nil) throws -> String {
        guard let value = try raw(name, hasDefault: fallback != nil) else { return fallback ?? "" }
        guard let text = value as? String else { throw refuse(name, allowed?.joined(separator: ", ") ?? "a string") }
        if let allowed, !allowed.contains(text) { throw refuse(name, allowed.joined(separator: ", ")) }
        return text
    }

    func optionalString(_ name: String) throws -> String? {
        guard let value = try raw(name, hasDefault: true) else { return nil }
        guard let text = value as? String else { throw refuse(name, "a string or null") }
        return text
    }

    func number(_ name: String, in range: ClosedRange<Double>, default fallback: Double? = nil,
                integral: Bool = false) throws -> Double {
        guard let value = try raw(name, hasDefault: fallback != nil) else { return fallback ?? 0 }
        let number = isBool(value) ? nil : (value as? NSNumber)?.doubleValue
        guard let number, range.contains(number), !integral || number.rounded() == number else {
            let show = { (bound: Double) in bound.rounded() == bound ? String(Int(bound)) : String(bound) }
            let bounds = "\(show(range.lowerBound))..\(show(range.upperBound))"
            throw refuse(name, integral ? "an integer \(bounds)" : "a number \(bounds)")
        }
        return number
    }

    func integer(_ name: String, in range: ClosedRange<Int>) throws -> Int {
        Int(try number(name, in: Double(range.lowerBound)...Double(range.upperBound), integral: true))
    }

    func bool(_ name: String, default fallback: Bool) throws -> Bool {
        guard let value = try raw(name, hasDefault: true) else { return fallback }
        guard isBool(value), let flag = value as? Bool else { throw refuse(name, "true or false") }
        return flag
    }
}

/// Protocol lines to the saved stdout, each written whole, from any thread.
final class LineWriter {
    private let descriptor: Int32
    private let lock = NSLock()

    init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    func send(_ message: Message) {
        guard JSONSerialization.isValidJSONObject(message),
              var data = try? JSONSerialization.data(withJSONObject: message, options: [.withoutEscapingSlashes]) else {
            logLine("cannot encode \(message)")
            return
        }
        data.append(0x0A)
        lock.lock()
        defer { lock.unlock() }
        data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
            var offset = 0
            while offset < bytes.count {
                let written = write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 && errno != EINTR { finish(0) }  // the orchestrator is gone: nobody to answer
                offset += max(written, 0)
            }
        }
    }
}

/// Reads stdin to its end, handing each line (without its newline) to `onLine`; a line longer than
/// maxLineBytes goes to `onTooLong` instead and is skipped up to its end.
func readLines(onLine: (Data) -> Void, onTooLong: () -> Void) {
    var pending = Data()
    var skipping = false
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        var start = 0
        while let newline = chunk[start..<count].firstIndex(of: 0x0A) {
            if !skipping {
                pending.append(contentsOf: chunk[start..<newline])
                if pending.count > maxLineBytes { onTooLong() } else { onLine(pending) }
            }
            skipping = false
            pending.removeAll(keepingCapacity: true)
            start = newline + 1
        }
        if !skipping {
            pending.append(contentsOf: chunk[start..<count])
            if pending.count > maxLineBytes {
                onTooLong()
                pending.removeAll()
                skipping = true
            }
        }
    }
    if !skipping && !pending.isEmpty { onLine(pending) }
}
