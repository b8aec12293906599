use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

/// A sink that reports each write on a channel; while `gate` holds a receiver it waits for a
/// message on it before each write (a stalled log pipe).
struct Sink {
    writes: mpsc::Sender<Vec<u8>>,
    gate: Option<mpsc::Receiver<()>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(gate) = &self.gate {
            if gate.recv().is_err() {
                self.gate = None;
            }
        }
        self.writes.send(buf.to_vec()).expect("the test is listening");
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sink(gated: bool) -> (Sink, mpsc::Receiver<Vec<u8>>, Option<mpsc::Sender<()>>) {
    let (writes, written) = mpsc::channel();
    let (open, gate) = mpsc::channel();
    let sink = Sink { writes, gate: gated.then_some(gate) };
    (sink, written, gated.then_some(open))
}

fn log(writer: &BatchWriter, line: &str) {
    writer.make_writer().write_all(line.as_bytes()).unwrap();
}

/// Logs `line` `lines` times on a thread of its own; the receiver hears when it is done.
fn log_in_background(
    writer: &BatchWriter,
    line: &str,
    lines: usize,
) -> (std::thread::JoinHandle<()>, mpsc::Receiver<()>) {
    let (done, finished) = mpsc::channel();
    let (writer, line) = (writer.clone(), line.to_string());
    let logger = std::thread::spawn(move || {
        for _ in 0..lines {
            log(&writer, &line);
        }
        done.send(()).unwrap();
    });
    (logger, finished)
}

#[test]
fn a_line_is_written_within_the_linger_time_without_anything_else_happening() {
    let (sink, written, _) = sink(false);
    let (writer, _guard) = batch_writer(sink).unwrap();
    for round in 0..3 {
        // Each round starts with an idle writer thread, which the line must wake.
        let started = Instant::now();
        log(&writer, &format!("line {round}\n"));
        let batch = written.recv_timeout(Duration::from_secs(5)).expect("the line is written");
        assert_eq!(batch, format!("line {round}\n").into_bytes());
        assert!(started.elapsed() < Duration::from_secs(1), "written after {:?}", started.elapsed());
    }
}

/// Four threads, each logging `per_thread` lines `"{thread} {i} {i % 97 times x}"`.
fn log_from_four_threads(writer: &BatchWriter, per_thread: usize) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|t| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    log(&writer, &format!("{t} {i} {}\n", "x".repeat(i % 97)));
                }
            })
        })
        .collect()
}

/// All of [`log_from_four_threads`]' lines are in `text`, whole, in each thread's order.
fn assert_all_whole_and_in_order(text: &str, per_thread: usize) {
    let mut next = [0usize; 4];
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (t, i): (usize, usize) = (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap());
        assert_eq!(i, next[t], "thread {t}'s lines in order");
        assert_eq!(parts.next().unwrap().len(), i % 97, "line {line:?} whole");
        next[t] += 1;
    }
    assert_eq!(next, [per_thread; 4], "every line written");
}

#[test]
fn lines_from_many_threads_are_all_written_whole_and_in_each_threads_order() {
    let (sink, written, _) = sink(false);
    let (writer, guard) = batch_writer(sink).unwrap();
    for thread in log_from_four_threads(&writer, 20_000) {
        thread.join().unwrap();
    }
    drop(guard);
    let batches: Vec<Vec<u8>> = written.try_iter().collect();
    assert!(batches.len() < 80_000 / 10, "lines are batched: {} writes for 80,000 lines", batches.len());
    assert_all_whole_and_in_order(&String::from_utf8(batches.concat()).unwrap(), 20_000);
}

#[test]
fn a_stalled_sink_makes_logging_wait_for_room_and_loses_nothing() {
    let (sink, written, open) = sink(true);
    let open = open.unwrap();
    let (writer, guard) = batch_writer(sink).unwrap();
    let line = format!("{}\n", "y".repeat(1023));
    let lines = MAX_BUFFERED_BYTES / line.len() * 3;
    let (logger, finished) = log_in_background(&writer, &line, lines);
    // The sink is stalled on its first write: the logger fills the buffer and then waits.
    let waited = finished.recv_timeout(Duration::from_millis(500));
    assert!(waited.is_err(), "logging {lines} lines into a stalled sink cannot finish");
    {
        let state = writer.shared.lock();
        assert!(state.lines.len() >= MAX_BUFFERED_BYTES - line.len(), "the buffer is full: {}", state.lines.len());
        assert!(state.lines.len() < MAX_BUFFERED_BYTES + line.len(), "and no fuller: {}", state.lines.len());
    }
    drop(open); // The sink resumes.
    finished.recv_timeout(Duration::from_secs(30)).expect("logging finishes once the sink resumes");
    logger.join().unwrap();
    drop(guard);
    let total: usize = written.try_iter().map(|batch| batch.len()).sum();
    assert_eq!(total, lines * line.len(), "every line was written");
}

#[test]
fn lines_logged_after_the_guard_is_dropped_are_written_directly() {
    let (sink, written, _) = sink(false);
    let (writer, guard) = batch_writer(sink).unwrap();
    log(&writer, "before\n");
    drop(guard);
    log(&writer, "after\n");
    let text: Vec<u8> = written.try_iter().flatten().collect();
    assert_eq!(text, b"before\nafter\n");
}

#[test]
fn stopping_while_threads_log_loses_nothing_and_keeps_each_threads_order() {
    for _ in 0..10 {
        let (sink, written, _) = sink(false);
        let (writer, guard) = batch_writer(sink).unwrap();
        let threads = log_from_four_threads(&writer, 5_000);
        std::thread::sleep(Duration::from_millis(2));
        drop(guard); // While the threads are still logging.
        for thread in threads {
            thread.join().unwrap();
        }
        assert_all_whole_and_in_order(&String::from_utf8(written.try_iter().flatten().collect()).unwrap(), 5_000);
    }
}

/// A sink whose first write panics.
struct PanicsOnce {
    panicked: bool,
    writes: mpsc::Sender<usize>,
}

impl Write for PanicsOnce {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !std::mem::replace(&mut self.panicked, true) {
            panic!("the sink broke");
        }
        let _ = self.writes.send(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn after_the_writer_thread_dies_logging_goes_on_directly_and_never_blocks() {
    let (writes, written) = mpsc::channel();
    let (writer, _guard) = batch_writer(PanicsOnce { panicked: false, writes }).unwrap();
    log(&writer, "lost with the writer thread\n");
    wait_until("the writer thread stopped", || !writer.shared.lock().running);
    let line = format!("{}\n", "z".repeat(1023));
    let lines = MAX_BUFFERED_BYTES / line.len() + 100;
    let (logger, finished) = log_in_background(&writer, &line, lines);
    finished.recv_timeout(Duration::from_secs(30)).expect("logging past the buffer's size does not block");
    logger.join().unwrap();
    assert_eq!(written.try_iter().sum::<usize>(), lines * line.len(), "every later line written directly");
}

/// Waits up to 10 s for `condition`.
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}
